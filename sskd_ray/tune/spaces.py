"""Sweep definitions (`tune_spaces/*.yaml`) and the trials they expand to.

    stages: [distill]                  # teacher_selftrain | distill | both, chained in that order
    metric: mask_AP                    # what Tune ranks trials by (of the last stage)
    seeds: [0, 1, 2]                   # every point runs once per seed; the table shows mean ± std
    overrides: {stages.distill.iterations: 200}     # fixed for every trial (dotted keys)
    factors:                           # one factor at a time around the defaults (Table 8's layout)
      loss.contrastive_weight: [0, 0.01, 0.1, 0.2, 0.5]
    search:                            # instead of `factors`: random search (an example for tuning)
      num_samples: 8
      space: {stages.distill.lr: {loguniform: [1.0e-4, 3.0e-3]}}

Every key is checked against the config (an unknown or mistyped key fails before anything runs).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sskd_ray.config import ConfigError, load_config, read_yaml
from sskd_ray.train.stage_graph import STAGES

# the stages a sweep varies: those that learn from pseudo-labels (L_pl, L_con), whose inputs the sweep
# makes once in <run_dir>/base/; in pipeline order, which is also how `both` chains them
STAGE_CHOICES = tuple(name for name, stage in STAGES.items() if stage.labels_from)
SPACE_KEYS = {"stages", "metric", "seeds", "overrides", "factors", "search", "description"}


@dataclass
class Trial:
    key: str  # stable id: a hash of the overrides and seed, so a re-run finds the same trial
    factor: str  # the swept key ("" for a search)
    value: object
    seed: int
    overrides: dict  # dotted key -> value, everything this trial changes

    def as_dict(self) -> dict:
        return {"key": self.key, "factor": self.factor, "value": self.value, "seed": self.seed,
                "overrides": self.overrides}


@dataclass
class SweepSpace:
    path: Path
    stages: list[str]
    metric: str = "mask_AP"
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)


def as_overrides(values: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def load_space(path: str | Path, base_files: list | None = None) -> SweepSpace:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep space not found: {path}")
    raw = read_yaml(path.read_text()) or {}  # as config files: 3e-4 is a float
    unknown = set(raw) - SPACE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} (known: {sorted(SPACE_KEYS)})")
    stages = raw.get("stages", ["distill"])
    stages = list(STAGE_CHOICES) if stages == "both" else list(stages)
    if not stages or any(s not in STAGE_CHOICES for s in stages):
        raise ConfigError(f"{path}: stages must be a list from {STAGE_CHOICES} or 'both', got {stages!r}")
    space = SweepSpace(path, stages, raw.get("metric", "mask_AP"), list(raw.get("seeds", [0])),
                       dict(raw.get("overrides") or {}), dict(raw.get("factors") or {}), dict(raw.get("search") or {}))
    if bool(space.factors) == bool(space.search):
        raise ConfigError(f"{path}: give either 'factors' (one at a time) or 'search', not both or neither")
    for key, values in space.factors.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: factors.{key} must be a non-empty list of values")
        for v in values:  # every value must be a valid setting of that key
            load_config(base_files or [], as_overrides({**space.overrides, key: v}))
    for key, dist in space.search.get("space", {}).items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in ("loguniform", "uniform", "choice"):
            raise ConfigError(f"{path}: search.space.{key} must be {{loguniform|uniform|choice: [...]}}")
        load_config(base_files or [], as_overrides({**space.overrides, key: _draw(dist, np.random.default_rng(0))}))
    load_config(base_files or [], as_overrides(space.overrides))
    return space


def _draw(dist: dict, rng: np.random.Generator):
    (kind, args), = dist.items()
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    return args[int(rng.integers(len(args)))]


def _key(overrides: dict, seed: int) -> str:
    text = json.dumps({"o": overrides, "s": seed}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def trial_for(space: SweepSpace, base: dict, factor: str, value, seed: int) -> Trial:
    """The trial of one (factor, value, seed). Values equal to the base config's are left out of
    the overrides, so the default point shared by several one-at-a-time blocks is one trial."""
    overrides = {k: v for k, v in {**space.overrides, factor: value}.items() if base.get(k) != v}
    overrides["seed"] = seed
    return Trial(_key(overrides, seed), factor, value, seed, overrides)


def expand_trials(space: SweepSpace, base: dict) -> list[Trial]:
    """One trial per (factor value, seed); `base` is the flat base config. Random-search points
    are drawn from a fixed seed so the same file always gives the same trials (resume finds them)."""
    trials = []
    for seed in space.seeds:
        for factor, values in space.factors.items():
            for value in values:
                trials.append(trial_for(space, base, factor, value, seed))
        if space.search:
            rng = np.random.default_rng(space.search.get("seed", 0))
            for _ in range(int(space.search.get("num_samples", 4))):
                point = {k: _draw(d, rng) for k, d in space.search["space"].items()}
                overrides = {**space.overrides, **point, "seed": seed}
                trials.append(Trial(_key(overrides, seed), "", json.dumps(point), seed, overrides))
    seen, unique = set(), []
    for t in trials:  # a value shared by two one-at-a-time blocks (the default) runs once
        if t.key not in seen:
            seen.add(t.key)
            unique.append(t)
    return unique
