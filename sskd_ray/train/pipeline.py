"""The whole method (METHOD.md "The three stages") as one resumable pipeline.

    data -> teacher fine-tune -> pseudo-label -> teacher self-train (re-init, + L_con) -> pseudo-label
         -> student distillation (full objective) -> student refinement (labeled only)
         + the supervised-only student baseline (same iterations as distillation + refinement)

Every step leaves a DONE marker in its folder under the run directory; re-running the pipeline
with the same run directory skips finished steps and resumes an interrupted stage from its Ray
Train checkpoint. The run directory, the data and every file in between may be local or in
object storage (s3://, gs://; sskd_ray.storage). MLflow: one parent run per run directory, one
child per stage and per pseudo-labeling pass.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, replace
from typing import Iterator

from sskd_ray import storage, tracking
from sskd_ray.config import Config, ConfigError, config_digest, flatten_config, save_config
from sskd_ray.data.coco import load_coco, subset_coco, write_coco
from sskd_ray.data.pseudo_labels import DamagedStoreError, check_store
from sskd_ray.data.splits import read_split_file, split_by_fraction, write_split_file
from sskd_ray.eval.report import fmt2
from sskd_ray.redaction import redact
from sskd_ray.train.loop import MODEL_FILE
from sskd_ray.train.stages import StageSpec, is_done, read_metrics, run_stage, write_model_spec

STUDENT_STAGES = ("distill", "refine", "baseline")


@dataclass
class PipelineData:
    labeled_json: str  # COCO json of the labeled split, file names absolute
    unlabeled_json: str  # the pool (its annotations, when there are any, only measure pseudo-label quality)
    val_json: str
    val_images: str
    test_json: str  # "" = no test split
    test_images: str
    class_names: list[str]
    category_ids: list[int]
    num_labeled: int
    num_unlabeled: int


def _absolute(dataset, image_ids: set[int]) -> dict:
    subset = subset_coco(dataset, image_ids)
    subset["images"] = [{**im, "file_name": dataset.image_path(im)} for im in subset["images"]]
    return subset


def prepare_data(cfg: Config, run_dir: str) -> PipelineData:
    """Built-in data generated into the run, or the configured COCO files; labeled / unlabeled split."""
    if cfg.data.source == "builtin":
        from sskd_ray.data.builtin import build_builtin_dataset

        root = build_builtin_dataset(storage.join(run_dir, "data"), cfg.data.builtin_train_images,
                                     cfg.data.builtin_val_images, cfg.data.builtin_image_size, cfg.data.seed,
                                     cfg.data.labeled_fraction, num_test=cfg.data.builtin_test_images)
        train_json, train_images = storage.join(root, "train.json"), storage.join(root, "images")
        val_json, val_images = storage.join(root, "val.json"), storage.join(root, "images")
        test_json = storage.join(root, "test.json") if cfg.data.builtin_test_images else ""
        test_images = storage.join(root, "images")
    else:
        train_json = cfg.data.train_json
        train_images = cfg.data.train_images or storage.parent(cfg.data.train_json)
        val_json, val_images = cfg.data.val_json, cfg.data.val_images or storage.parent(cfg.data.val_json)
        test_json = cfg.data.test_json
        test_images = cfg.data.test_images or (storage.parent(test_json) if test_json else "")
    splits = storage.join(run_dir, "splits")
    train = load_coco(train_json, train_images)
    if train.skipped:
        print(redact(f"data: {len(train.skipped)} training entries skipped (first: {train.skipped[0]}); "
                     f"see {splits}/skipped.json"))
    if cfg.data.split_file:
        labeled, unlabeled = read_split_file(cfg.data.split_file, train.images)
    else:
        labeled, unlabeled = split_by_fraction([im["id"] for im in train.images], cfg.data.labeled_fraction, cfg.data.seed)
    for name, ids in (("labeled", labeled), ("unlabeled", unlabeled)):
        part = _absolute(train, set(ids))
        write_coco(storage.join(splits, f"{name}.json"), part["images"], part["annotations"], part["categories"])
    write_split_file(storage.join(splits, "labeled.txt"), train.images, labeled)
    storage.write_json(storage.join(splits, "skipped.json"), train.skipped, indent=1)
    for name, source, images in (("val", val_json, val_images), ("test", test_json, test_images)):
        if source:
            held_out = load_coco(source, images)
            part = _absolute(held_out, {im["id"] for im in held_out.images})
            write_coco(storage.join(splits, f"{name}.json"), part["images"], part["annotations"], part["categories"])
    return PipelineData(storage.join(splits, "labeled.json"), storage.join(splits, "unlabeled.json"),
                        storage.join(splits, "val.json"), splits, storage.join(splits, "test.json") if test_json else "",
                        splits, train.class_names, train.category_ids, len(labeled), len(unlabeled))


def _check_same_config(cfg: Config, run_dir: str) -> None:
    """A run directory belongs to one config: resuming with another would mix results silently."""
    saved = storage.join(run_dir, "config.yaml")
    if not storage.is_file(saved):
        return
    import yaml

    old = yaml.safe_load(storage.read_text(saved))
    old_flat, new_flat = flatten_config(old), redact(flatten_config(cfg))  # config.yaml is stored redacted
    differ = sorted(k for k, v in new_flat.items() if old_flat.get(k) != v and not k.startswith(("tracking.", "run_dir")))
    if differ:
        raise ConfigError(f"{redact(run_dir)} holds a run made with another config (differs in {', '.join(differ[:6])}); "
                          f"use a new --run-dir, or the same config to resume")


def _stage_data(cfg: Config, data: PipelineData, image_size: int, pseudo_dir: str = "") -> dict:
    d = cfg.data
    short = d.train_short_side or image_size
    return {"labeled_json": data.labeled_json, "labeled_images": storage.parent(data.labeled_json),
            "val_json": data.val_json, "val_images": data.val_images, "image_size": image_size,
            "test_json": data.test_json, "test_images": data.test_images,
            "pseudo_dir": pseudo_dir, "pseudo_images": storage.parent(data.unlabeled_json),
            "score_threshold": cfg.label.score_threshold,
            "image_cache_dir": cfg.data.image_cache_dir, "image_cache_gb": cfg.data.image_cache_gb,
            # native aspect ratio (DataConfig): training views, and the sizes eval / labeling / predict use
            "train_short_side": short, "scale_jitter": list(d.scale_jitter),
            "crop_size": list(d.crop_size) or [short, short],
            "inference": {"short_side": d.eval_short_side or image_size, "max_side": d.eval_max_side}}


def stage_specs(cfg: Config, data: PipelineData, run_dir: str) -> dict[str, StageSpec]:
    """Every training stage of the pipeline, keyed by name, with its inputs wired to earlier outputs."""
    params = flatten_config(cfg)

    def at(*parts: str) -> str:
        return storage.join(run_dir, *parts)

    common = dict(loss=cfg.loss, class_names=data.class_names, category_ids=data.category_ids, seed=cfg.seed,
                  params=params, storage=at("ray_train"))
    s = cfg.stages
    baseline = replace(s.distill, iterations=s.distill.iterations + s.refine.iterations,
                       use_pseudo_labels=False, use_contrastive=False)
    teacher_size, student_size = cfg.teacher.image_size, cfg.student.image_size
    return {
        "teacher_finetune": StageSpec("teacher_finetune", at("teacher", "finetune"), cfg.teacher,
                                      s.teacher_finetune, data=_stage_data(cfg, data, teacher_size), **common),
        "teacher_selftrain": StageSpec("teacher_selftrain", at("teacher", "selftrain"), cfg.teacher,
                                       s.teacher_selftrain,
                                       data=_stage_data(cfg, data, teacher_size, at("pseudo", "finetune")),
                                       **common),  # re-initialised from the pretrained teacher (no init)
        "distill": StageSpec("distill", at("student", "distill"), cfg.student, s.distill,
                             data=_stage_data(cfg, data, student_size, at("pseudo", "adapted")), **common),
        "refine": StageSpec("refine", at("student", "refine"), cfg.student, s.refine,
                            data=_stage_data(cfg, data, student_size),
                            init=at("student", "distill", "final", "model.pt"), **common),
        "baseline": StageSpec("baseline", at("student", "baseline"), cfg.student, baseline,
                              data=_stage_data(cfg, data, student_size), **common),
    }


def evaluate_initial_teacher(cfg: Config, data: PipelineData, folder: str, use_gpu: bool, weights_dir: str = "") -> dict:
    """The teacher before adaptation (zero-shot for a VFM or for the built-in teacher pretrained on the
    source domain, `pretrained: source`), evaluated once in a Ray task; cached in folder/metrics.json.
    With `weights_dir`, the evaluated weights are also saved there as a teacher checkpoint (model.pt +
    teacher.json) that pseudo-labeling can read (the ablations distill from the zero-shot teacher)."""
    if is_done(folder):
        return read_metrics(folder)
    import ray

    # DEFAULT: not inside the caller's placement group (a Tune trial's holds no CPU for it)
    @ray.remote(num_gpus=1 if use_gpu else 0, scheduling_strategy="DEFAULT")
    def evaluate() -> dict:
        import torch

        from sskd_ray.eval.model_eval import evaluate_model
        from sskd_ray.models.build import build_model

        torch.manual_seed(cfg.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_model(cfg.teacher, data.class_names).to(device)
        if weights_dir:
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            storage.write_bytes(storage.join(weights_dir, MODEL_FILE), buffer.getvalue())
            write_model_spec(weights_dir, cfg.teacher, data.class_names, data.category_ids,
                             _stage_data(cfg, data, cfg.teacher.image_size)["inference"])
        sizes = dict(short_side=cfg.data.eval_short_side or cfg.teacher.image_size, device=device,
                     max_side=cfg.data.eval_max_side, category_ids=data.category_ids)
        metrics, _ = evaluate_model(model, data.val_json, data.val_images, **sizes)
        if data.test_json:
            test, _ = evaluate_model(model, data.test_json, data.test_images, **sizes)
            metrics.update({f"test_{k}": v for k, v in test.items() if k.startswith("mask_")})
        return metrics

    metrics = {**ray.get(evaluate.remote()), "stage": "teacher_initial"}
    storage.write_json(storage.join(folder, "metrics.json"), metrics)
    storage.write_text(storage.join(folder, "DONE"), "done\n")
    return metrics


def pseudo_label(cfg: Config, data: PipelineData, teacher_dir: str, out: str, parent_run_id: str, uri: str) -> dict:
    """One labeling pass over the pool with a trained teacher (skipped when finished before),
    logged as a child of `parent_run_id` in the run's MLflow store `uri`."""
    from sskd_ray.label.run import label_pool

    if is_done(out):
        try:
            check_store(out)  # footers only: a shard damaged since is set aside and relabeled below
            return storage.read_json(storage.join(out, "summary.json"))
        except DamagedStoreError as err:
            print(redact(f"[pseudo-label] {len(err.damaged)} shard(s) of {out} cannot be read (first: "
                         f"{err.damaged[0][0]}): setting them aside and labeling their images again"), flush=True)
    cfg = replace(cfg, tracking=replace(cfg.tracking, uri=uri))
    summary = label_pool(cfg, data.unlabeled_json, teacher_dir, out, parent_run_id=parent_run_id)
    storage.write_text(storage.join(out, "DONE"), "done\n")
    quality = summary.get("quality", {})
    print(f"[pseudo-label] {summary['images_labeled']} images, {summary['instances']} instances"
          + (f", quality vs ground truth: mask AP {quality['mask_AP']:.1f}, precision {fmt2(quality.get('precision'))}, "
             f"recall {fmt2(quality.get('recall'))}, {fmt2(quality.get('instances_per_image'))} per image "
             f"(ground truth {fmt2(quality.get('gt_per_image'))})" if quality else "") + f" -> {redact(out)}")
    return summary


ROWS = (("teacher_initial", "Teacher, before adaptation"), ("teacher_finetune", "Teacher, fine-tuned on labeled"),
        ("teacher_selftrain", "Teacher, adapted (self-trained, + L_con)"),
        ("baseline", "Student, supervised only (labeled)"), ("distill", "Student after transfer"),
        ("refine", "Student after refinement"))


@contextlib.contextmanager
def open_run(cfg: Config, run_dir: str) -> Iterator[PipelineRun]:
    """The run directory's config check, data, stage specs and MLflow parent run (reopened on resume)."""
    from sskd_ray.ray_setup import check_shared_storage

    run_dir = storage.normalize(run_dir)
    check_shared_storage(run_dir)  # on a multi-node cluster, every node reads and writes here
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri, run_dir)
    _check_same_config(cfg, run_dir)
    save_config(cfg, storage.join(run_dir, "config.yaml"))
    tags = {"sskd.pipeline": run_dir}
    parent = tracking.find_run(uri, cfg.tracking.experiment, tags, run_dir=run_dir)
    with tracking.start_run(uri, cfg.tracking.experiment, f"pipeline {storage.name(run_dir)}", run_id=parent, tags=tags,
                            run_dir=run_dir) as parent_id:
        tracking.log_params(uri, parent_id, flatten_config(cfg))
        data = prepare_data(cfg, run_dir)
        print(redact(f"data: {data.num_labeled} labeled, {data.num_unlabeled} unlabeled, val {data.val_json}"))
        yield PipelineRun(cfg, run_dir, data, stage_specs(cfg, data, run_dir), uri, parent_id)


def result_digest(cfg: Config) -> str:
    """The config's hash without where the run lives (run_dir, tracking): two machines running the same
    study get the same digest."""
    flat = {k: v for k, v in flatten_config(cfg).items() if not k.startswith(("run_dir", "tracking."))}
    return config_digest(flat)


def write_result(results_dir: str, step: str, cfg: Config, metrics: dict, history: list | None = None) -> None:
    """<results_dir>/<step>.json: one finished step's numbers (config digest, seed, metrics, and the val
    curve when the stage evaluated along the way), small enough to commit, so a long study resumes
    anywhere and its docs are rendered from these files alone."""
    if not results_dir:
        return
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = {"step": step, "seed": cfg.seed, "config_digest": result_digest(cfg), "metrics": keep}
    if history:
        record["curve"] = [{k: row[k] for k in ("iteration", "mask_AP", "mask_AP50", "mask_AP_agnostic") if k in row}
                           for row in history if "mask_AP" in row]
    storage.write_json(storage.join(results_dir, f"{step}.json"), record)


@dataclass
class PipelineRun:
    cfg: Config
    run_dir: str
    data: PipelineData
    specs: dict[str, StageSpec]
    uri: str
    parent_id: str
    results_dir: str = ""  # where each finished step's small result file goes ("" = nowhere)

    def prepare_inputs(self, name: str) -> None:
        """Run whatever stage `name` reads and is not there yet (earlier stages, labeling passes)."""
        needs = {"teacher_selftrain": ["teacher_finetune"], "distill": ["teacher_finetune", "teacher_selftrain"],
                 "refine": ["teacher_finetune", "teacher_selftrain", "distill"]}.get(name, [])
        for earlier in needs:
            self.run_stage(earlier)
        if name == "teacher_selftrain":
            self.label("teacher_finetune", "finetune")
        if name == "distill":
            self.label("teacher_selftrain", "adapted")

    def label(self, teacher_stage: str, out: str) -> dict:
        summary = pseudo_label(self.cfg, self.data, storage.join(self.specs[teacher_stage].folder, "final"),
                               storage.join(self.run_dir, "pseudo", out), self.parent_id, self.uri)
        write_result(self.results_dir, f"label_{out}", self.cfg,
                     {"images_labeled": summary.get("images_labeled"), "instances": summary.get("instances"),
                      **{f"quality_{k}": v for k, v in summary.get("quality", {}).items()}})
        return summary

    def run_stage(self, name: str) -> dict:
        self.prepare_inputs(name)
        metrics = run_stage(self.specs[name], self.uri, self.cfg.tracking.experiment, self.parent_id)
        history = storage.join(self.specs[name].folder, "history.json")
        write_result(self.results_dir, name, self.cfg, metrics,
                     storage.read_json(history) if storage.is_file(history) else None)
        return metrics


def run_pipeline(cfg: Config, run_dir: str, only: str | None = None, results_dir: str = "") -> dict:
    """Run (or resume) the pipeline in `run_dir`; `only` runs one stage and what it needs. With
    `results_dir`, every finished step also leaves its small result file there (`write_result`).
    Returns {stage: metrics}."""
    with open_run(cfg, run_dir) as run:
        run.results_dir = results_dir
        if run.data.num_unlabeled == 0 and only not in ("teacher_finetune", "baseline"):
            source = cfg.data.train_json if cfg.data.source != "builtin" else storage.join(run.run_dir, "data")
            raise ConfigError(f"the unlabeled pool is empty: {redact(run.data.unlabeled_json)} lists no image "
                              f"(training data {redact(source)}, data.labeled_fraction={cfg.data.labeled_fraction}); "
                              f"pseudo-labeling needs unlabeled images: nothing was trained")
        if only:
            return {only: run.run_stage(only)}
        results = {"teacher_initial": evaluate_initial_teacher(cfg, run.data, storage.join(run.run_dir, "teacher", "initial"),
                                                               cfg.stages.teacher_finetune.use_gpu)}
        write_result(results_dir, "teacher_initial", cfg, results["teacher_initial"])
        for name in ("teacher_finetune", "teacher_selftrain", "distill", "refine", "baseline"):
            results[name] = run.run_stage(name)
        final = storage.join(run.run_dir, "student", "final")
        if not storage.is_file(storage.join(final, "model.pt")):
            storage.copy_tree(storage.join(run.specs["refine"].folder, "final"), final)
        from sskd_ray.eval.report import write_report

        report = write_report(run.run_dir, results, ROWS, run.specs)
        uri, parent_id = run.uri, run.parent_id
        tracking.log_metrics(uri, parent_id, {f"{name}.{k}": v for name, m in results.items()
                                              for k, v in m.items() if k in ("mask_AP", "mask_AP50")})
        figures = [storage.join(run.run_dir, name) for name in ("losses.png", "predictions.png")]  # stages log theirs
        tracking.log_artifacts(uri, parent_id, [report, storage.join(final, "teacher.json"), *figures])
        tracking.log_artifacts(uri, parent_id, [storage.join(final, "model.pt")], artifact_path="student")
    return results
