"""Ray Tune sweeps over the training stages (RAY_NOTES.md: a Tune *function* trainable that fits a
TorchTrainer; `Tuner(TorchTrainer)` no longer works).

The sweep first makes the inputs its stages read, once, in `<run_dir>/base/` (the fine-tuned
teacher, pseudo-labels, and for distillation trials the adapted teacher's pseudo-labels) through
the pipeline's own code. Each trial then runs the same `run_stage` the pipeline uses, in
`<run_dir>/trials/<key>/`, and reports its metrics to Tune. Re-running the same command restores
the Tune experiment: finished trials are not run again (and each trial's stages also skip when
their folder says DONE). The sweep directory may be local or a URI (s3://, gs://), like a run's.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import replace

from sskd_ray import storage, tracking
from sskd_ray.config import Config, flatten_config, load_config
from sskd_ray.redaction import redact
from sskd_ray.train.pipeline import PipelineData, PipelineRun, open_run, pseudo_label, stage_specs
from sskd_ray.train.stages import run_stage
from sskd_ray.tune.spaces import Trial, as_overrides, expand_trials, load_space
from sskd_ray.tune.table import write_tables


def _trial_config(files: list[str], overrides: list[str], trial: dict) -> Config:
    return load_config(files, list(overrides) + as_overrides(trial["overrides"]))


def run_trial_stages(base: PipelineRun, cfg: Config, trial: dict, stages: list[str], sweep_dir: str,
                     parent_id: str, callbacks: list | None = None) -> dict:
    """Run the trial's stages (chained when two), each through the pipeline's stage runner."""
    folder = storage.join(sweep_dir, "trials", trial["key"])
    specs = stage_specs(cfg, base.data, base.run_dir)  # inputs (pseudo-labels) come from the base run
    results = {}
    for name in stages:
        spec = replace(specs[name], name=f"{name}-{trial['key']}", folder=storage.join(folder, name),
                       storage=storage.join(sweep_dir, "ray_train"), params=flatten_config(cfg))
        if name == "distill" and "teacher_selftrain" in stages:  # chained: this trial's teacher labels the pool
            pseudo_label(cfg, base.data, storage.join(folder, "teacher_selftrain", "final"),
                         storage.join(folder, "pseudo"), parent_id, base.uri)
            spec = replace(spec, data={**spec.data, "pseudo_dir": storage.join(folder, "pseudo")})
        results[name] = run_stage(spec, base.uri, cfg.tracking.experiment, parent_id,
                                  tags={"sskd.trial": trial["key"]}, callbacks=callbacks)
    return results


def _trainable(files: list[str], overrides: list[str], stages: list[str], sweep_dir: str, base_dir: str,
               uri: str, parent_id: str):
    def trainable(config: dict) -> None:
        import ray.tune

        trial = config["trial"]
        path = storage.join(sweep_dir, "trials", trial["key"], "result.json")
        if storage.is_file(path):  # finished in an earlier attempt whose Tune state was not saved in time
            ray.tune.report({k: v for k, v in storage.read_json(path).items() if k.startswith(("teacher_", "student_"))})
            return
        cfg = _trial_config(files, overrides, trial)
        base = _base_run(load_config(files, overrides), base_dir, uri)
        results = run_trial_stages(base, cfg, trial, stages, sweep_dir, parent_id)
        report = {"trial_key": trial["key"]}
        for name, metrics in results.items():
            role = "teacher" if name.startswith("teacher") else "student"
            report.update({f"{role}_{k}": metrics.get(k) for k in ("mask_AP", "mask_AP50")})
        storage.write_json(path, {**trial, **report})
        ray.tune.report(report)

    return trainable


def _base_run(cfg: Config, base_dir: str, uri: str) -> PipelineRun:
    """The base run's data and specs, without reopening MLflow (inside trials)."""
    data = PipelineData(**storage.read_json(storage.join(base_dir, "splits", "data.json")))
    return PipelineRun(cfg, base_dir, data, stage_specs(cfg, data, base_dir), uri, "")


def max_concurrent_trials(cfg: Config, stages: list[str]) -> int:
    """As many trials as the cluster fits at once: the widest stage's workers x (CPU or GPU) each."""
    import ray

    res = ray.cluster_resources()
    widest = max((getattr(cfg.stages, s) for s in stages), key=lambda st: st.num_workers * st.cpus_per_worker)
    if widest.use_gpu:
        return max(1, int(res.get("GPU", 0) // widest.num_workers))
    cpus = res.get("CPU", 1)
    if len(ray.nodes()) == 1:  # a local Ray counts logical CPUs (init_ray asks for >= 4): use the real cores
        import os

        cpus = min(cpus, os.cpu_count() or 1)
    # (two trials on 2 cores starved each other: a worker group missed Ray Train's 60 s start timeout)
    return max(1, int(cpus // (widest.num_workers * widest.cpus_per_worker)))


def fit_grid(trainable, points: list[dict], tune_storage: str, name: str, metric: str, max_concurrent: int) -> list[str]:
    """One Tune trial per point (`config["trial"]`), or the same experiment restored when it exists
    (finished trials are kept, errored ones run again); -> the errors of the trials that failed."""
    import ray.tune

    exp_path = storage.join(tune_storage, name)
    if ray.tune.Tuner.can_restore(exp_path):
        print(redact(f"resuming the sweep in {exp_path}: finished trials are kept"))
        tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space={"trial": ray.tune.grid_search(points)},
            tune_config=ray.tune.TuneConfig(metric=metric, mode="max", max_concurrent_trials=max_concurrent),
            run_config=ray.tune.RunConfig(name=name, storage_path=tune_storage))
    return [str(r.error) for r in tuner.fit() if r.error]


def run_sweep(space_path: str, files: list[str], overrides: list[str], run_dir: str,
              max_concurrent: int = 0) -> dict:
    import ray.tune

    run_dir = storage.normalize(run_dir)
    base_cfg = load_config(files, overrides)
    space = load_space(space_path, files)
    trials = expand_trials(space, flatten_config(base_cfg))
    start = time.perf_counter()
    uri = tracking.resolve_tracking_uri(base_cfg.tracking.uri, run_dir)
    base_cfg = replace(base_cfg, tracking=replace(base_cfg.tracking, uri=uri))
    with open_run(base_cfg, storage.join(run_dir, "base")) as base:
        base.prepare_inputs(space.stages[0])
        storage.write_json(storage.join(base.run_dir, "splits", "data.json"), dataclasses.asdict(base.data))
        tags = {"sskd.sweep": run_dir}
        sweep_id = tracking.find_run(uri, base_cfg.tracking.experiment, tags, run_dir=run_dir)
        with tracking.start_run(uri, base_cfg.tracking.experiment, f"sweep {space.path.stem}", run_id=sweep_id,
                                tags=tags, run_dir=run_dir) as parent_id:
            tracking.log_params(uri, parent_id, {"space": str(space.path), "trials": len(trials),
                                                 "stages": ",".join(space.stages)})
            print(f"sweep {space.path.name}: {len(trials)} trials of {'+'.join(space.stages)}")
            fn = ray.tune.with_resources(_trainable(files, overrides, space.stages, run_dir, base.run_dir,
                                                    uri, parent_id), {"CPU": 0.01})
            metric = f"{'teacher' if space.stages[-1].startswith('teacher') else 'student'}_{space.metric}"
            errors = fit_grid(fn, [t.as_dict() for t in trials], storage.join(run_dir, "tune"), "sweep", metric,
                              max_concurrent or max_concurrent_trials(base_cfg, space.stages))
            paths = write_tables(space, trials, base_cfg, run_dir)
            tracking.log_artifacts(uri, parent_id, paths)
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed; first: {errors[0][:2000]}")
    print(redact(f"sweep finished in {time.perf_counter() - start:.0f} s: {storage.join(run_dir, 'sensitivity.md')}"))
    return {"trials": len(trials), "tables": paths}


__all__ = ["fit_grid", "max_concurrent_trials", "run_sweep", "run_trial_stages", "Trial"]
