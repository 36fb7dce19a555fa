"""Running the ablation plan (`ablation_plan.py`): each step through the pipeline's own code, each
group of steps as one Ray Tune trial, phases one after another.

    <out>/steps/<kind>-<key>/     one folder per step (a stage's metrics.json, history.json, final/;
                                  a labeling pass's store; the data split), DONE written last
    <out>/tune/<phase>-<digest>/  the Tune experiment of a phase (restored when the same command runs again)
    <out>/ray_train/              Ray Train checkpoints (an interrupted stage resumes from its latest)
    <out>/mlflow.db               one parent run "ablation", a child run per stage and labeling pass

A re-run of the same command restores each phase's Tune experiment (finished trials are kept) and
every finished step is skipped on its DONE marker, so adding a table or a seed later runs only the
steps that are new. The output folder may be local or a URI, like a run's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import replace

from sskd_ray import storage, tracking
from sskd_ray.config import Config, load_config
from sskd_ray.redaction import redact
from sskd_ray.train.pipeline import PipelineData, evaluate_initial_teacher, prepare_data, pseudo_label, stage_specs
from sskd_ray.train.stages import is_done, run_stage
from sskd_ray.tune.ablation_plan import Plan, Step
from sskd_ray.tune.spaces import as_overrides
from sskd_ray.tune.sweep import fit_grid, max_concurrent_trials

PHASES = {1: "teachers", 2: "students"}


@dataclasses.dataclass
class Context:
    files: list[str]
    overrides: list[str]
    out: str
    uri: str = ""
    experiment: str = "sskd-ray"
    parent_id: str = ""

    def folder(self, key_or_step) -> str:
        name = key_or_step.folder if isinstance(key_or_step, Step) else key_or_step
        return storage.join(self.out, "steps", name)

    def config(self, step: Step) -> Config:
        return replace(load_config(self.files, self.overrides + as_overrides(step.overrides)),
                       tracking=replace(load_config(self.files, self.overrides).tracking, uri=self.uri))


def step_folder(ctx: Context, plan: Plan, key: str) -> str:
    return ctx.folder(plan.steps[key])


def run_data_step(ctx: Context, step: Step) -> PipelineData:
    """The split (built-in scenes generated, or the configured COCO files) in the step's folder."""
    folder, cfg = ctx.folder(step), ctx.config(step)
    saved = storage.join(folder, "data.json")
    if not is_done(folder):
        data = prepare_data(cfg, folder)
        storage.write_json(saved, dataclasses.asdict(data))
        storage.write_text(storage.join(folder, "DONE"), "done\n")
    return PipelineData(**storage.read_json(saved))


def run_step(ctx: Context, plan: Plan, step: Step, trial: str) -> dict:
    """One teacher, labeling or student step (skipped when its folder says DONE); -> its metrics."""
    cfg, folder = ctx.config(step), ctx.folder(step)
    data = PipelineData(**storage.read_json(storage.join(step_folder(ctx, plan, step.inputs[0]), "data.json")))
    if step.kind == "teacher_initial":
        return evaluate_initial_teacher(cfg, data, folder, cfg.stages.teacher_finetune.use_gpu,
                                        weights_dir=storage.join(folder, "final"))
    if step.kind == "label":
        teacher = storage.join(step_folder(ctx, plan, step.inputs[1]), "final")
        return pseudo_label(cfg, data, teacher, folder, ctx.parent_id, ctx.uri)
    spec = stage_specs(cfg, data, ctx.out)[step.kind]
    spec = replace(spec, name=f"{step.kind}-{step.key}", folder=folder, storage=storage.join(ctx.out, "ray_train"))
    if step.kind in ("teacher_selftrain", "distill") and len(step.inputs) > 1:  # reads a labeling pass
        spec = replace(spec, data={**spec.data, "pseudo_dir": step_folder(ctx, plan, step.inputs[1])})
    if step.kind == "refine":  # continues the distilled student
        spec = replace(spec, init=storage.join(step_folder(ctx, plan, step.inputs[1]), "final", "model.pt"))
    return run_stage(spec, ctx.uri, cfg.tracking.experiment, ctx.parent_id,
                     tags={"sskd.trial": trial, "sskd.step": step.key})


def _trainable(ctx: Context, plan: Plan):
    def trainable(config: dict) -> None:
        import ray.tune

        group = config["trial"]
        steps = [plan.steps[k] for k in group["steps"]]
        report = {"group": group["group"]}
        for i, step in enumerate(steps, 1):
            state = "done before" if is_done(ctx.folder(step)) else "running"
            print(f"[ablate] {group['group']}: step {i}/{len(steps)} {step.folder} (seed {step.seed}, "
                  f"fraction {step.fraction:g}): {state}", flush=True)
            metrics = run_step(ctx, plan, step, group["group"])
            report.update({f"{step.kind}_{k}": v for k, v in metrics.items() if k in ("mask_AP", "mask_AP50")})
            report["mask_AP"] = metrics.get("mask_AP")  # the group's last step: what Tune ranks by
        ray.tune.report(report)

    return trainable


def _phase_name(phase: int, groups: dict[str, list[Step]]) -> str:
    """The Tune experiment's name: the phase and a digest of its trials (another selection of tables
    or seeds is another experiment; the same command restores this one)."""
    digest = hashlib.sha1(" ".join(sorted(groups)).encode()).hexdigest()[:8]
    return f"{PHASES[phase]}-{digest}"


def run_phase(ctx: Context, plan: Plan, phase: int, max_concurrent: int) -> list[str]:
    """The phase's groups as Tune trials; -> the errors of failed trials."""
    import ray.tune

    groups = plan.groups(phase)
    steps = [s for g in groups.values() for s in g]
    done = sum(is_done(ctx.folder(s)) for s in steps)
    print(f"[ablate] phase {phase} ({PHASES[phase]}): {len(groups)} trials, {len(steps)} steps, {done} done before")
    if not groups:
        return []
    base = load_config(ctx.files, ctx.overrides)
    stages = ("teacher_finetune", "teacher_selftrain") if phase == 1 else ("distill", "refine")
    points = [{"group": g, "steps": [s.key for s in members]} for g, members in groups.items()]
    fn = ray.tune.with_resources(_trainable(ctx, plan), {"CPU": 0.01})
    return fit_grid(fn, points, storage.join(ctx.out, "tune"), _phase_name(phase, groups),
                    "mask_AP",
                    max_concurrent or max_concurrent_trials(base, list(stages)))


def run_plan(plan: Plan, files: list[str], overrides: list[str], out: str, max_concurrent: int = 0) -> Context:
    """Data on the driver, then the teacher and student phases under one MLflow parent run."""
    out = storage.normalize(out)
    base = load_config(files, overrides)
    uri = tracking.resolve_tracking_uri(base.tracking.uri, out)
    ctx = Context(files, list(overrides), out, uri, base.tracking.experiment)
    for step in plan.steps.values():
        if step.phase == 0:
            data = run_data_step(ctx, step)
            print(redact(f"[ablate] data {step.folder}: {data.num_labeled} labeled, {data.num_unlabeled} unlabeled"))
    tags = {"sskd.ablation": out}
    start = time.perf_counter()
    parent = tracking.find_run(uri, ctx.experiment, tags, run_dir=out)
    with tracking.start_run(uri, ctx.experiment, "ablation", run_id=parent, tags=tags, run_dir=out) as parent_id:
        ctx.parent_id = parent_id
        tracking.log_params(uri, parent_id, {"steps": len(plan.steps), "rows": len(plan.rows),
                                             "tables": ",".join(sorted({str(r.table) for r in plan.rows}))})
        errors = []
        for phase in PHASES:
            errors += run_phase(ctx, plan, phase, max_concurrent)
            if errors:  # a student cannot run without its teacher
                break
        tracking.log_metrics(uri, parent_id, {"wall_seconds": time.perf_counter() - start})
    if errors:
        raise RuntimeError(f"{len(errors)} ablation trial(s) failed; first: {errors[0][:2000]}")
    return ctx
