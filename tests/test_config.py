from pathlib import Path

import pytest

from sskd_ray.config import Config, ConfigError, config_to_dict, flatten_config, load_config, save_config

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
    ("student.neck=unet", "student.neck"),  # allowed values come from the field's Literal type
    ("teacher.kind=sam3", "teacher.kind"),
    ("stages.refine.schedule=cosine", "stages.refine.schedule"),
    ("data.labeled_fraction=0", "data.labeled_fraction"),  # ranges from its Annotated Field
    ("loss.temperature=0", "loss.temperature"),
    ("stages.distill.pseudo_share=1.5", "stages.distill.pseudo_share"),
    ("stages.distill.batch_size=0", "stages.distill.batch_size"),
    ("stages.distill.use_gpu=1", "stages.distill.use_gpu"),  # strict: an int is not a bool
    ("data.crop_size=[64, 64, 3]", "data.crop_size"),
    ("data.scale_jitter=[2.0, 0.5]", "data.scale_jitter"),  # lo > hi: the one check across fields
    ("loss=3", "loss"),  # a section replaced by a scalar
    ("student.embed_kernel=2", "student.embed_kernel"),  # 1 or 3
    ("label.lease_seconds=0", "label.lease_seconds"),
    ("data.test_json=7", "data.test_json"),
])
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_full_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  distill:\n    lr_scale: 2\n")
    with pytest.raises(ConfigError, match=r"stages\.distill\.lr_scale"):
        load_config(path)


def test_every_error_is_reported_with_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["loss.sampler=random", "stages.distill.iterations=-1"])
    assert "loss.sampler" in str(err.value) and "stages.distill.iterations" in str(err.value)
    assert "'uniform'" in str(err.value)  # the allowed values are named


def test_unknown_key_lists_the_known_keys_of_its_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'stages\.distill\.lr_scale' \(known: .*backbone_lr_mult"):
        load_config(None, ["stages.distill.lr_scale=2"])


def test_partial_section_keeps_the_other_defaults_of_that_section(tmp_path):
    # teacher's defaults differ from ModelConfig()'s: an override of one key keeps the rest of them
    cfg = load_config(None, ["teacher.image_size=96"])
    assert cfg.teacher.image_size == 96 and cfg.teacher.encoder == Config().teacher.encoder == "efficientnet_lite2"


def test_round_trip_and_flatten(tmp_path):
    cfg = load_config(None, ["seed=3"])
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(saved)
    assert config_to_dict(again) == config_to_dict(cfg)
    flat = flatten_config(cfg)
    assert flat["seed"] == 3 and flat["stages.distill.batch_size"] == 8


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
