"""The stand-in foundation teacher: source / target domains, the pretraining job, its fp16 weights."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_ray.config import ModelConfig
from sskd_ray.data import fashion_mnist
from sskd_ray.data.builtin import ASSET_DIR, CLASS_NAMES, Assets, load_assets, render_scene
from sskd_ray.data.domains import SOURCE, TARGET
from sskd_ray.models import build
from sskd_ray.models.checkpoint import read_weights

REPO = Path(__file__).resolve().parents[1]
# The source domain reads the full Fashion-MNIST files (Debian package dataset-fashion-mnist; .ci/run
# installs it). The target domain, the demo and the shipped weights do not need it.
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist.FASHION_DIR.is_dir(),
                                         reason="needs the Debian package dataset-fashion-mnist")


@needs_fashion_mnist
def test_source_items_exclude_exactly_the_shipped_indices():
    shipped = fashion_mnist.shipped_indices()
    npz = np.load(ASSET_DIR / "fashion_objects.npz")
    source = fashion_mnist.unshipped_objects()
    for split, name, total in (("train", "train", 60000), ("test", "val", 10000)):
        images, labels = fashion_mnist.read_split(split)
        # the indices are the ones the shipped file was made from ...
        assert np.array_equal(images[shipped[split]], npz[f"{split}_images"])
        assert np.array_equal(labels[shipped[split]], npz[f"{split}_labels"])
        # ... and the source domain holds every other item, none of those
        src_images, src_labels, src_index = source[name]
        assert len(src_index) == total - len(shipped[split]) == total - 10 * fashion_mnist.PER_CLASS[split]
        assert not np.intersect1d(src_index, shipped[split]).size
        assert np.array_equal(src_images, images[src_index]) and np.array_equal(src_labels, labels[src_index])


def test_missing_dataset_names_the_path_and_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        fashion_mnist.read_split("train", tmp_path)


def _scenes(domain, assets, seed, n=4):
    rng = np.random.default_rng(seed)
    return [render_scene(rng, assets, "train", 64, 6, domain) for _ in range(n)]


@needs_fashion_mnist
def test_domains_are_seeded_and_differ_in_backgrounds():
    target, source = load_assets("target"), load_assets("source")
    # the source domain never reads the photographs: it renders with none at all
    no_photos = Assets(objects=source.objects, textures=np.zeros((0, 1, 1, 3), np.uint8))
    for domain, assets in ((SOURCE, no_photos), (TARGET, target)):
        a, b = _scenes(domain, assets, 7), _scenes(domain, assets, 7)
        for (im_a, masks_a, cls_a), (im_b, masks_b, cls_b) in zip(a, b):
            assert np.array_equal(im_a, im_b) and cls_a == cls_b
            assert all(np.array_equal(x, y) for x, y in zip(masks_a, masks_b))
        assert not np.array_equal(a[0][0], _scenes(domain, assets, 8)[0][0])
    with pytest.raises(ValueError):  # the target needs its photographs
        _scenes(TARGET, no_photos, 7)
    # backgrounds (pixels under no object) differ: smooth procedural fields vs photos + clutter
    src, tgt = _scenes(SOURCE, no_photos, 7, 8), _scenes(TARGET, target, 7, 8)

    def roughness(scenes):  # mean absolute horizontal gradient over background pixels
        values = []
        for image, masks, _ in scenes:
            bg = ~np.any(np.stack(masks), axis=0) if masks else np.ones(image.shape[:2], bool)
            grad = np.abs(np.diff(image.astype(np.float32).mean(-1), axis=1))
            values.append(grad[bg[:, 1:] & bg[:, :-1]].mean())
        return float(np.mean(values))

    assert roughness(tgt) > roughness(src)


def _json(value):  # tuples come back from json as lists
    return json.loads(json.dumps(value))


def _run_smoke(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name / "out"
    job = subprocess.run([sys.executable, "jobs/pretrain_teacher.py", "--smoke", "--out", str(out),
                          "--work-dir", str(tmp_path / name / "work")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    return [_run_smoke(tmp, name) for name in ("a", "b")], tmp


@needs_fashion_mnist
@pytest.mark.long
def test_smoke_job_writes_weights_and_provenance_reproducibly(smoke_runs):
    (a, b), _ = smoke_runs
    prov = json.loads((a / "teacher_source.json").read_text())
    assert prov["command"] == f"python jobs/pretrain_teacher.py --smoke --out {a} --work-dir {a.parent / 'work'}"
    assert prov["iterations"] == 4 and prov["seed"] == 0 and prov["data"]["source"] == _json(SOURCE.as_dict())
    assert prov["data"]["target"] == _json(TARGET.as_dict()) and prov["class_names"] == list(CLASS_NAMES)
    for split in ("source_val", "target_val"):
        assert 0.0 <= prov["ap"][split]["mask_AP"] <= prov["ap"][split]["mask_AP50"] <= 100.0
    state_a = torch.load(a / "teacher_source.pt", weights_only=True)
    state_b = torch.load(b / "teacher_source.pt", weights_only=True)
    assert {v.dtype for v in state_a.values() if v.is_floating_point()} == {torch.float16}
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert (a / "teacher_source.pt").read_bytes() == (b / "teacher_source.pt").read_bytes()


def test_smoke_refuses_the_package_assets():
    job = subprocess.run([sys.executable, "jobs/pretrain_teacher.py", "--smoke"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert job.returncode == 2 and "another --out" in job.stderr


@needs_fashion_mnist
@pytest.mark.long
def test_fp16_weights_load_and_match_the_fp32_model(smoke_runs, device, monkeypatch):
    (a, _), tmp = smoke_runs
    prov = json.loads((a / "teacher_source.json").read_text())
    cfg = ModelConfig(**{**prov["model"], "pretrained": ""})
    fp32 = build.build_model(cfg, list(CLASS_NAMES))
    fp32.load_state_dict(read_weights(tmp / "a" / "work" / "stage" / "final"))
    monkeypatch.setattr(build, "SOURCE_WEIGHTS", a / "teacher_source.pt")
    shipped = build.build_model(replace(cfg, pretrained="source"), list(CLASS_NAMES))  # the demo's path
    for (name, p32), p16 in zip(fp32.state_dict().items(), shipped.state_dict().values()):
        expected = p32.half().float() if p32.is_floating_point() else p32  # exactly the fp16 rounding
        assert torch.equal(p16, expected), name
    fp32, shipped = fp32.to(device).eval(), shipped.to(device).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator(device=device).manual_seed(0), device=device)
    with torch.no_grad():
        out32, out16 = fp32(images), shipped(images)
    for field in ("class_logits", "mask_logits"):
        x, y = getattr(out32, field), getattr(out16, field)
        assert not torch.equal(x, y)  # the weights were rounded ...
        torch.testing.assert_close(y, x, atol=5e-2, rtol=5e-2)  # ... by no more than fp16 does


def test_source_pretrained_without_the_file_is_a_loud_error(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "SOURCE_WEIGHTS", tmp_path / "teacher_source.pt")
    cfg = build.tiny_model_config(ModelConfig(encoder="efficientnet_lite2"))
    with pytest.raises(FileNotFoundError, match="teacher_source.pt.*pretrain_teacher.py"):
        build.build_model(replace(cfg, pretrained="source"), list(CLASS_NAMES))
