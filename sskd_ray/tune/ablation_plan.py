"""The paper's ablation tables (1, 2, 3, 4, 6, 12) as a small graph of cached steps.

A *step* is one unit of work that leaves a folder: the data split (`data`), the teacher before
adaptation saved as a checkpoint (`teacher_initial`), a training stage (`teacher_finetune`,
`teacher_selftrain`, `distill`, `refine`, `baseline`) or a pseudo-labeling pass (`label`). Its key is
a content address: a hash of its kind, of the part of the resolved config it reads (the pipeline's own
`stage_graph.config_reads`), and of its inputs' keys. Two table rows that need the same work therefore name the same step, which runs
once: Table 3's "full three stages" is Table 6's full method at 10 % and refines Table 2's "all
three", which is Table 4's fusion row and Table 12's "student under T2", all distilled from Table
1's teacher self-trained with L_con. Different seeds or labeled fractions give different keys.

Each step belongs to one *group*, the Tune trial that runs it: one teacher group per (seed,
labeled fraction) holds every teacher stage and labeling pass of that seed and split, in order; one
student group per distillation (with its refinement) or supervised baseline. Groups run in phases
(data on the driver, then teachers, then students), so every input a trial reads was finished by
an earlier phase and no two trials ever own the same step: concurrent trials cannot race on a
shared teacher, with no lock to hold or lose. This module is pure (no Ray, no files).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sskd_ray.config import flatten_config, load_config
from sskd_ray.train.stage_graph import config_reads
from sskd_ray.tune.spaces import as_overrides

TABLES = (1, 2, 3, 4, 6, 12)
FRACTIONS = (0.05, 0.1, 0.2, 0.3)  # Table 6; the paper reports 5 / 10 / 30 %

TEACHER_KINDS = ("teacher_initial", "teacher_finetune", "teacher_selftrain", "label")

# the distillation objective of each student variant (Tables 2 and 4); "L_sup + L_con" keeps the pool
# in the batches with alpha = 0, so L_con still sees D_L u D_U as in Eq. 3
STUDENT_VARIANTS = {
    "all": {},
    "sup": {"stages.distill.use_pseudo_labels": False, "stages.distill.use_contrastive": False},
    "sup_pl": {"stages.distill.use_contrastive": False},
    "sup_con": {"loss.pseudo_label_weight": 0.0},
    "uniform": {"loss.sampler": "uniform"},
    "mask": {"loss.sampler": "mask"},
    "class": {"loss.sampler": "class"},
    "fusion": {"loss.sampler": "fusion"},
}


@dataclass(frozen=True)
class Step:
    kind: str
    key: str
    seed: int
    fraction: float
    overrides: dict  # dotted key -> value on top of the base config (seed and fraction included)
    inputs: tuple[str, ...]  # keys of the steps it reads: the data step first
    group: str  # the trial that runs it

    @property
    def folder(self) -> str:
        return f"{self.kind}-{self.key}"

    @property
    def phase(self) -> int:
        return 0 if self.kind == "data" else 1 if self.kind in TEACHER_KINDS else 2

    def as_dict(self) -> dict:
        return {"kind": self.kind, "key": self.key, "seed": self.seed, "fraction": self.fraction,
                "overrides": self.overrides, "inputs": list(self.inputs), "group": self.group}


@dataclass(frozen=True)
class Row:
    table: int
    label: str  # the row as the paper names it
    seed: int
    step: str  # key of the step whose metrics.json the row reads
    paper: tuple = (None, None)  # the paper's (mask AP, mask AP50) for the row; None where it gives none
    column: str = ""  # Table 6: the labeled fraction


@dataclass
class Plan:
    steps: dict[str, Step] = field(default_factory=dict)  # key -> step, in an order that runs inputs first
    rows: list[Row] = field(default_factory=list)

    def groups(self, phase: int) -> dict[str, list[Step]]:
        """group -> its steps in run order, for one phase."""
        out: dict[str, list[Step]] = {}
        for step in self.steps.values():
            if step.phase == phase:
                out.setdefault(step.group, []).append(step)
        return out


def step_key(kind: str, flat: dict, inputs: tuple[str, ...]) -> str:
    reads = {k: v for k, v in flat.items() if k.startswith(config_reads(kind)) and not k.startswith("data.image_cache")}
    text = json.dumps({"kind": kind, "reads": reads, "inputs": list(inputs)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class _Builder:
    """Adds steps to a plan, each keyed by what it reads, reusing one that is already there."""

    def __init__(self, files: list[str], overrides: list[str]):
        self.files, self.overrides, self.plan = files, list(overrides), Plan()

    def add(self, kind: str, seed: int, fraction: float, inputs: tuple[str, ...], extra: dict | None = None,
            group: str = "") -> str:
        overrides = {"seed": seed, "data.labeled_fraction": fraction, **(extra or {})}
        flat = flatten_config(load_config(self.files, self.overrides + as_overrides(overrides)))
        key = step_key(kind, flat, inputs)
        if key not in self.plan.steps:
            group = group or (f"teachers-{inputs[0]}-s{seed}" if kind in TEACHER_KINDS else f"student-{key}")
            self.plan.steps[key] = Step(kind, key, seed, fraction, overrides, inputs, "data" if kind == "data" else group)
        return key

    def data(self, fraction: float) -> str:
        return self.add("data", 0, fraction, ())

    def teacher(self, name: str, seed: int, fraction: float) -> str:
        """initial (zero-shot) | finetune | adapted (self-trained with L_con) | selftrain_nocon."""
        d = self.data(fraction)
        if name == "initial":
            return self.add("teacher_initial", seed, fraction, (d,))
        if name == "finetune":
            return self.add("teacher_finetune", seed, fraction, (d,))
        pool = self.label(seed, fraction, "finetune")  # self-training reads the fine-tuned teacher's labels
        return self.add("teacher_selftrain", seed, fraction, (d, pool),
                        {"stages.teacher_selftrain.use_contrastive": name == "adapted"})

    def label(self, seed: int, fraction: float, teacher: str) -> str:
        d = self.data(fraction)
        return self.add("label", seed, fraction, (d, self.teacher(teacher, seed, fraction)))

    def distill(self, seed: int, fraction: float, teacher: str = "adapted", variant: str = "all") -> str:
        d = self.data(fraction)
        extra = STUDENT_VARIANTS[variant]
        if not extra.get("stages.distill.use_pseudo_labels", True):  # L_sup only: no pool, no teacher
            return self.add("distill", seed, fraction, (d,), extra)
        return self.add("distill", seed, fraction, (d, self.label(seed, fraction, teacher)), extra)

    def refine(self, seed: int, fraction: float, distill: str) -> str:
        return self.add("refine", seed, fraction, (self.data(fraction), distill), group=self.plan.steps[distill].group)

    def baseline(self, seed: int, fraction: float) -> str:
        return self.add("baseline", seed, fraction, (self.data(fraction),))


TITLES = {
    1: "Table 1 - teacher adaptation: self-training with vs without L_con (teacher)",
    2: "Table 2 - loss components of the distillation objective (student after distillation)",
    3: "Table 3 - training stages (student)",
    4: "Table 4 - negative sampling in L_con (student after distillation)",
    6: "Table 6 - labeled fractions: supervised only vs the full method (student)",
    12: "Table 12 - distilling from the zero-shot teacher (T1) vs the adapted teacher (T2)",
}
# the paper's numbers (Cityscapes, 10 % labeled): Tables 1-4, 6, 12 and Sec. 10.2 of the supplement
PAPER_TABLE6 = {"full": {0.05: (30.7, None), 0.1: (33.9, 58.7), 0.3: (40.4, None)}, "sup": {0.1: (21.1, None)}}


def _table1(b: _Builder, seed: int, f: float, fractions) -> list:
    return [("Zero-shot teacher", b.teacher("initial", seed, f), (22.0, 42.3)),
            ("Fine-tuned on labeled only", b.teacher("finetune", seed, f), (28.7, None)),
            ("Self-training without L_con", b.teacher("selftrain_nocon", seed, f), (29.8, 54.9)),
            ("Self-training with L_con (ours)", b.teacher("adapted", seed, f), (30.5, 56.6))]


def _table2(b: _Builder, seed: int, f: float, fractions) -> list:
    return [("L_sup", b.distill(seed, f, variant="sup"), (21.1, None)),
            ("L_sup + L_pl", b.distill(seed, f, variant="sup_pl"), (30.7, None)),
            ("L_sup + L_con", b.distill(seed, f, variant="sup_con"), (27.5, None)),
            ("L_sup + L_pl + L_con", b.distill(seed, f), (32.2, 56.5))]


def _table3(b: _Builder, seed: int, f: float, fractions) -> list:
    zero_shot, finetuned, adapted = (b.distill(seed, f, teacher) for teacher in ("initial", "finetune", "adapted"))
    return [("Supervised only (no distillation)", b.baseline(seed, f), (21.1, None)),
            ("Distillation only (zero-shot teacher, no refinement)", zero_shot, (23.8, 42.9)),
            ("No teacher adaptation (zero-shot teacher, distill + refine)", b.refine(seed, f, zero_shot), (25.7, None)),
            ("Fine-tuned-only teacher (no self-training, distill + refine)", b.refine(seed, f, finetuned), (32.0, None)),
            ("No student refinement (adapted teacher, distill)", adapted, (32.2, 56.5)),
            ("Full three stages", b.refine(seed, f, adapted), (33.9, 58.7))]


def _table4(b: _Builder, seed: int, f: float, fractions) -> list:
    return [("Uniform", b.distill(seed, f, variant="uniform"), (None, None)),
            ("Mask-only", b.distill(seed, f, variant="mask"), (None, None)),
            ("Class-only", b.distill(seed, f, variant="class"), (None, None)),
            ("Fusion (ours)", b.distill(seed, f, variant="fusion"), (32.2, 56.5))]


def _table6(b: _Builder, seed: int, f: float, fractions) -> list:
    rows = []
    for fraction in fractions:
        column = f"{fraction:g}"
        paper = {k: v.get(round(fraction, 4), (None, None)) for k, v in PAPER_TABLE6.items()}
        rows.append(("Supervised only", b.baseline(seed, fraction), paper["sup"], column))
        rows.append(("Full method", b.refine(seed, fraction, b.distill(seed, fraction)), paper["full"], column))
    return rows


def _table12(b: _Builder, seed: int, f: float, fractions) -> list:
    return [("Teacher T1 (zero-shot)", b.teacher("initial", seed, f), (22.0, 42.3)),
            ("Teacher T2 (adapted)", b.teacher("adapted", seed, f), (30.5, 56.6)),
            ("Student under T1", b.distill(seed, f, "initial"), (23.8, 42.9)),
            ("Student under T2", b.distill(seed, f), (32.2, 56.5))]


TABLE_ROWS = {1: _table1, 2: _table2, 3: _table3, 4: _table4, 6: _table6, 12: _table12}


def plan_ablation(files: list[str], overrides: list[str], tables=TABLES, seeds=(0, 1, 2), fractions=FRACTIONS) -> Plan:
    """Every step the chosen tables need over the seeds (each once), and the rows that read them."""
    unknown = sorted(set(tables) - set(TABLE_ROWS))
    if unknown:
        raise ValueError(f"no ablation table {unknown}; the tables are {list(TABLE_ROWS)}")
    builder = _Builder(files, overrides)
    fraction = load_config(files, overrides).data.labeled_fraction
    for seed in seeds:
        for table in tables:
            for label, step, paper, *column in TABLE_ROWS[table](builder, seed, fraction, fractions):
                builder.plan.rows.append(Row(table, label, seed, step, paper, column[0] if column else ""))
    return builder.plan
