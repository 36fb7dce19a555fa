from pathlib import Path

import pytest
import yaml

from sskd_ray.config import (Config, ConfigError, config_from_dict, config_to_dict, flatten_config,
                             load_config, save_config)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_values():
    cfg = Config()
    assert (cfg.loss.contrastive_weight, cfg.loss.num_negatives, cfg.loss.temperature) == (0.2, 256, 0.1)
    assert cfg.label.score_threshold == 0.3
    assert cfg.stages.teacher_finetune.schedule == "multistep" and cfg.stages.distill.schedule == "poly"


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {temperature: 0.4}\nstages: {distill: {iterations: 7}}\n")
    cfg = load_config(path, ["loss.temperature=0.2", "stages.refine.batch_size=3", "student.freeze=[a, b]"])
    assert cfg.loss.temperature == 0.2
    assert cfg.stages.distill.iterations == 7
    assert cfg.stages.refine.batch_size == 3
    assert cfg.student.freeze == ["a", "b"]
    assert cfg.stages.teacher_finetune.iterations == Config().stages.teacher_finetune.iterations


def test_int_accepted_for_float():
    assert load_config(None, ["loss.contrastive_weight=1"]).loss.contrastive_weight == 1.0


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `3e-4` as the string "3e-4"; the float field takes it as 0.0003
    cfg = load_config(None, ["stages.distill.lr=3e-4", "loss.temperature=1E-1"])
    assert cfg.stages.distill.lr == 0.0003 and cfg.loss.temperature == 0.1
    path = tmp_path / "c.yaml"
    path.write_text("stages: {refine: {lr: 5e-5}}\n")
    assert load_config(path).stages.refine.lr == 0.00005
    with pytest.raises(ConfigError, match=r"stages\.distill\.lr"):  # other strings stay errors
        load_config(None, ["stages.distill.lr=fast"])
    with pytest.raises(ConfigError, match=r"stages\.distill\.iterations"):  # and ints stay ints
        load_config(None, ["stages.distill.iterations=1e3"])


@pytest.mark.parametrize("override, key", [
    ("loss.temprature=0.2", "loss.temprature"),
    ("stages.distill.iterations=many", "stages.distill.iterations"),
    ("stages.distill.iterations=true", "stages.distill.iterations"),
    ("loss.sampler=random", "loss.sampler"),
    ("nothing=1", "nothing"),
])
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_full_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  distill:\n    lr_scale: 2\n")
    with pytest.raises(ConfigError, match=r"stages\.distill\.lr_scale"):
        load_config(path)


def test_round_trip_and_flatten(tmp_path):
    cfg = load_config(None, ["seed=3"])
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    again = config_from_dict(yaml.safe_load(Path(saved).read_text()))
    assert config_to_dict(again) == config_to_dict(cfg)
    flat = flatten_config(cfg)
    assert flat["seed"] == 3 and flat["stages.distill.batch_size"] == 8


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
