"""The method's training stages (docs/method.md, "The objective and the three stages") and what each
reads: the one table the pipeline, the sweeps and the ablations build on.

A stage trains one model, the teacher or the student, with one `stages.<section>` of the config. It
may read the pool's pseudo-labels from a labeling pass made with an earlier stage's teacher, and it
may start from an earlier stage's trained weights. `config_reads` names the parts of the resolved
config a step's result depends on (the ablation planner keys its cached steps by them). Pure: no
Ray, no files.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from sskd_ray.config import Config, StageConfig


@dataclass(frozen=True)
class StageDef:
    role: str  # "teacher" | "student": which model config it trains
    folder: tuple[str, ...]  # its folder under the run directory
    section: str = ""  # its `stages.<section>` ("" = its own name)
    labels_from: str = ""  # the stage whose trained teacher pseudo-labels the pool for it ("": labeled only)
    labels_pass: str = ""  # that labeling pass's folder under <run_dir>/pseudo/
    init_from: str = ""  # the stage whose trained weights it starts from ("": the configured pretrained ones)
    also_reads: tuple[str, ...] = ()  # config keys its settings take from elsewhere


# in the order the pipeline runs them
STAGES = {
    "teacher_finetune": StageDef("teacher", ("teacher", "finetune")),
    # re-initialised from the pretrained teacher (no init_from), trained on the fine-tuned teacher's labels
    "teacher_selftrain": StageDef("teacher", ("teacher", "selftrain"), labels_from="teacher_finetune",
                                  labels_pass="finetune"),
    "distill": StageDef("student", ("student", "distill"), labels_from="teacher_selftrain", labels_pass="adapted"),
    "refine": StageDef("student", ("student", "refine"), init_from="distill"),
    # the supervised-only student: distill's settings, labeled images only, for distill + refine iterations
    "baseline": StageDef("student", ("student", "baseline"), section="distill",
                         also_reads=("stages.refine.iterations",)),
}
# steps that are not training stages, and what they read
OTHER_STEP_READS = {
    "data": ("data.",),  # the labeled / unlabeled split
    "teacher_initial": ("seed", "teacher.", "data."),  # the teacher before adaptation, evaluated
    "label": ("label.", "data."),  # a labeling pass (its teacher is an input of its own)
}


def stage_config(cfg: Config, name: str) -> StageConfig:
    """The StageConfig stage `name` runs with."""
    stage = getattr(cfg.stages, STAGES[name].section or name)
    if name == "baseline":
        return replace(stage, iterations=cfg.stages.distill.iterations + cfg.stages.refine.iterations,
                       use_pseudo_labels=False, use_contrastive=False)
    return stage


def inputs_of(name: str) -> tuple[str, ...]:
    """The stages whose results stage `name` reads directly (a labeling teacher, start weights)."""
    definition = STAGES[name]
    return tuple(s for s in (definition.labels_from, definition.init_from) if s)


def config_reads(kind: str) -> tuple[str, ...]:
    """Dotted prefixes of the config keys a step of `kind` (a stage, or one of OTHER_STEP_READS) reads."""
    if kind in OTHER_STEP_READS:
        return OTHER_STEP_READS[kind]
    definition = STAGES[kind]
    reads = ("seed", f"{definition.role}.", "data.", "loss.", f"stages.{definition.section or kind}.")
    if definition.labels_from:  # pseudo-labels are kept above the labeling threshold
        reads += ("label.score_threshold",)
    return reads + definition.also_reads
