"""Native aspect ratio: inputs keep each image's aspect, batches are padded, and masks map back to
the original pixels exactly (issue 15: labeling, eval and predict of 2:1 and 1:3 images)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sskd_ray.config import Config, LossConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.coco import load_coco
from sskd_ray.data.resize import fit_size, pad_batch
from sskd_ray.data.views import make_views
from sskd_ray.deploy.predict import predict_arrays
from sskd_ray.eval.model_eval import predict_coco
from sskd_ray.label.predictor import TeacherPredictor
from sskd_ray.losses.correspondence import strong_to_weak
from sskd_ray.losses.matcher import hungarian_match
from sskd_ray.losses.point_sampling import real_extent, uncertain_points
from sskd_ray.losses.set_loss import set_loss
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.postprocess import instances_from_output
from sskd_ray.train.objective import Objective

WIDE, TALL = (40, 80), (30, 90)  # 2:1 and 1:3 originals (H, W)


def test_fit_size_keeps_the_aspect_and_caps_the_long_side():
    assert fit_size(WIDE, 64) == (64, 128)
    assert fit_size(TALL, 64) == (64, 192)
    assert fit_size((90, 30), 64, max_side=150) == (150, 50)  # long side capped: short side below 64
    assert fit_size((1024, 2048), 1024, 2048) == (1024, 2048)  # Cityscapes at its native size
    assert fit_size((100, 250), 64, multiple=32) == (64, 160)
    assert fit_size(WIDE, 0) == WIDE  # 0 keeps the image's own size


def test_pad_batch_pads_bottom_right_and_reports_content_sizes():
    a, b = torch.ones(3, 2, 5), 2 * torch.ones(3, 4, 3)
    images, sizes = pad_batch([a, b], multiple=4)
    assert images.shape == (2, 3, 4, 8) and sizes == [(2, 5), (4, 3)]
    assert images[0, :, :2, :5].eq(1).all() and images[0, :, 2:].eq(0).all() and images[0, :, :, 5:].eq(0).all()
    assert images[1, :, :, :3].eq(2).all() and images[1, :, :, 3:].eq(0).all()


def _one_query_output(mask_logits: torch.Tensor) -> SegOutput:
    """Query 0 is class 0 with certainty; the others are "no object"."""
    b, n = mask_logits.shape[:2]
    class_logits = torch.full((b, n, len(CLASS_NAMES) + 1), -20.0)
    class_logits[:, :, -1] = 20.0
    class_logits[:, 0, 0], class_logits[:, 0, -1] = 20.0, -20.0
    return SegOutput(mask_logits, class_logits, torch.zeros(b, 4, 1, 1), [])


def test_content_crop_maps_the_left_half_to_the_original_left_half():
    # an image of original size (60, 120) entered the model at (32, 64) inside a (32, 96) frame; the
    # logits (stride 4) are (8, 24): content = columns 0..15. +10 on the content's left half (0..7) and
    # on the padding (16..23, which must be cropped away), -10 on its right half.
    logits = torch.full((1, 2, 8, 24), -10.0)
    logits[0, 0, :, :8] = 10.0
    logits[0, 0, :, 16:] = 10.0
    (insts,) = instances_from_output(_one_query_output(logits), [(60, 120)], 0.0, 1,
                                     image_sizes=[(32, 64)], input_size=(32, 96))
    expected = np.zeros((60, 120), bool)
    expected[:, :60] = True
    assert len(insts) == 1 and insts[0].mask.shape == (60, 120)
    assert np.array_equal(insts[0].mask, expected)
    # a tall content region: the top third of a (90, 30) original, content (48, 16) in a (64, 32) frame
    logits = torch.full((1, 2, 16, 8), -10.0)
    logits[0, 0, :4] = 10.0  # content rows 0..11 in logit pixels; the top third is rows 0..3
    logits[0, 0, 12:] = 10.0  # padding rows
    (insts,) = instances_from_output(_one_query_output(logits), [(90, 30)], 0.0, 1,
                                     image_sizes=[(48, 16)], input_size=(64, 32))
    expected = np.zeros((90, 30), bool)
    expected[:30] = True
    assert np.array_equal(insts[0].mask, expected)


def test_whole_frame_postprocessing_matches_plain_interpolation():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    out = _one_query_output(logits)
    (a,) = instances_from_output(out, [(20, 36)], 0.0, 1)
    ref = torch.nn.functional.interpolate(logits[:, :1], size=(20, 36), mode="bilinear", align_corners=False)[0, 0]
    assert np.array_equal(a[0].mask, (ref > 0).numpy())


@pytest.fixture
def student():
    """A tiny real student whose forward records its input shapes; a hook sets its mask logits to +1 so
    every top query yields a mask covering the whole content (shapes are then checkable)."""
    cfg = dataclasses.replace(tiny_model_config(Config().student), image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg, list(CLASS_NAMES)).eval()
    seen: list[tuple[int, ...]] = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        return SegOutput(torch.ones_like(output.mask_logits), output.class_logits, output.embeddings, output.aux)

    model.register_forward_hook(hook)
    return model, cfg, seen


def _write_images(folder) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i, (h, w) in enumerate((WIDE, TALL)):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        items.append({"id": i + 1, "file_name": path.name, "height": h, "width": w, "path": str(path)})
    return items


def test_predict_coco_runs_at_native_aspect(student, tmp_path):
    model, _, seen = student
    items = _write_images(tmp_path)
    coco = {"images": [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in items],
            "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "val.json", tmp_path)
    results = predict_coco(model, dataset, 64, batch_size=1, top_k=3)
    assert seen == [(1, 3, 64, 128), (1, 3, 64, 192)]
    from pycocotools import mask as mask_utils

    for im in items:
        mine = [r for r in results if r["image_id"] == im["id"]]
        assert mine and all(tuple(r["segmentation"]["size"]) == (im["height"], im["width"]) for r in mine)
        assert all(mask_utils.decode(r["segmentation"]).all() for r in mine)  # the whole image, no padding lost


def test_labeling_predictor_pads_a_mixed_batch_and_maps_back(student, tmp_path):
    _, cfg, _ = student
    spec = {"model": dataclasses.asdict(cfg), "class_names": list(CLASS_NAMES), "checkpoint": "",
            "category_ids": list(range(1, 11)), "inference": {"short_side": 64, "max_side": 160}}
    predictor = TeacherPredictor(spec, str(tmp_path / "store"), "t", 64, 0.0, 3, batch_size=2, max_pixels=10**7)
    seen = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        return SegOutput(torch.ones_like(output.mask_logits), output.class_logits, output.embeddings, output.aux)

    predictor.model.register_forward_hook(hook)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for size in (WIDE, TALL)]
    found = predictor._predict(arrays)
    # 2:1 -> (64, 128); 1:3 -> long side capped at 160 -> (53, 160); one frame padded to multiples of 32
    assert seen == [(2, 3, 64, 160)]
    for size, insts in zip((WIDE, TALL), found):
        assert insts and all(i.mask.shape == size and i.mask.all() for i in insts)


def test_predict_arrays_runs_at_native_aspect(student, tmp_path):
    model, cfg, seen = student
    items = _write_images(tmp_path)
    card = {"model": dataclasses.asdict(cfg), "inference": {"short_side": 64, "max_side": 0}}
    done, errors = predict_arrays(model, card, [{"path": im["path"]} for im in items], 1, 0.0, 3, device="cpu")
    assert not errors and seen == [(1, 3, 64, 128), (1, 3, 64, 192)]
    for (_, array, insts), im in zip(done, items):
        assert array.shape[:2] == (im["height"], im["width"])
        assert insts and all(i.mask.shape == (im["height"], im["width"]) for i in insts)


# ---- training views at native aspect ------------------------------------------------------------

def _position_image(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xs, ys, torch.full_like(xs, 0.5)])  # colour encodes the scene position


@pytest.mark.parametrize("seed", range(4))
def test_weak_view_is_a_crop_of_the_scaled_image_with_its_aspect(seed):
    image = _position_image(40, 80)  # 2:1
    pair = make_views(image, 32, torch.Generator().manual_seed(seed), flip=False, photometric=False,
                      crop_size=(32, 48))
    assert pair.scaled_size == (32, 64) and pair.weak.shape == (3, 32, 48)
    top, left = pair.offset
    assert top == 0 and 0 <= left <= 16
    scaled = F.interpolate(image[None], size=(32, 64), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(pair.weak, scaled[:, :, left:left + 48]) and pair.pad_mask.all()
    # the strong view is exactly the crop-box pixels of the weak view, resized, with the crop's aspect
    x0, y0, x1, y1 = pair.crop_box.tolist()
    rows, cols = slice(round(y0 * 32), round(y1 * 32)), slice(round(x0 * 48), round(x1 * 48))
    box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
    assert abs(box_w / box_h - 48 / 32) < 0.1  # aspect of the crop, up to rounding
    ref = F.interpolate(pair.weak[None, :, rows, cols], size=(32, 48), mode="bilinear", align_corners=False)[0]
    if pair.strong_flipped:
        ref = ref.flip(-1)
    assert torch.allclose(pair.strong, ref.clamp(0, 1))


def test_scale_jitter_keeps_the_aspect_within_its_range():
    image = _position_image(40, 80)
    shorts = set()
    for seed in range(12):
        pair = make_views(image, 32, torch.Generator().manual_seed(seed), crop_size=(24, 24), scale_jitter=(0.5, 2.0))
        sh, sw = pair.scaled_size
        assert 16 <= sh <= 64 and abs(sw - 2 * sh) <= 1
        assert pair.weak.shape == (3, 24, 24)
        shorts.add(sh)
    assert len(shorts) > 3  # the scale really varies


def test_pad_mask_is_exact_for_an_image_smaller_than_the_crop():
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    pair = make_views(image, 20, torch.Generator().manual_seed(1), flip=False, photometric=False, crop_size=(32, 48))
    expected = torch.zeros(32, 48, dtype=torch.bool)
    expected[:20, :30] = True
    assert torch.equal(pair.pad_mask, expected) and pair.offset == (0, 0)
    assert torch.equal(pair.weak[:, :20, :30], image) and pair.weak[:, 20:].eq(0).all() and pair.weak[:, :, 30:].eq(0).all()
    x0, y0, x1, y1 = pair.crop_box.tolist()
    assert 0 <= x0 < x1 <= 30 / 48 and 0 <= y0 < y1 <= 20 / 32  # the strong crop never takes padding


def test_targets_follow_scale_flip_crop_and_padding(tmp_path):
    from sskd_ray.train.data import _resize_masks

    image = torch.zeros(3, 20, 40)
    mask = np.zeros((1, 20, 40), bool)
    mask[0, 5:15, 0:10] = True  # the original's left edge
    pair = make_views(image, 40, torch.Generator().manual_seed(3), flip=True, photometric=False, crop_size=(48, 64))
    # scaled to (40, 80) then cropped at (top 0, some left): the view is (48, 64), padded below row 40
    masks = _resize_masks(mask, pair)
    assert masks.shape == (1, 48, 64) and not masks[0, 40:].any()
    full = np.zeros((40, 80), bool)
    full[10:30, 0:20] = True
    if pair.weak_flipped:
        full = full[:, ::-1]
    top, left = pair.offset
    assert np.array_equal(masks[0, :40].numpy(), full[top:top + 40, left:left + 64])


@pytest.mark.parametrize("seed", range(4))
def test_strong_to_weak_pairs_the_same_scene_location_on_a_non_square_view(seed):
    image = _position_image(60, 120)
    pair = make_views(image, 32, torch.Generator().manual_seed(seed), photometric=False, crop_size=(32, 48),
                      scale_jitter=(0.8, 1.5))
    aligned, valid = strong_to_weak(pair.strong[None], pair.crop_box[None], pair.strong_flipped[None], (32, 48))
    weak = F.normalize(pair.weak[None], dim=1)
    assert valid.float().mean() > 0.1
    error = (aligned - weak).abs().amax(1)[valid]
    assert error.median() < 0.03 and error.max() < 0.15


def test_padding_is_never_an_anchor():
    """The weak-view embeddings get gradient from L_con only where they are anchors: none in padding."""
    cfg = dataclasses.replace(tiny_model_config(Config().student), image_size=64)
    model = build_model(cfg, list(CLASS_NAMES))
    objective = Objective(model, LossConfig(num_negatives=8, max_anchors=10_000), False, True)
    g = torch.Generator().manual_seed(0)
    weak = F.normalize(torch.randn(1, 8, 8, 12, generator=g), dim=1).requires_grad_(True)
    strong = F.normalize(torch.randn(1, 8, 8, 12, generator=g), dim=1)
    out_w = SegOutput(torch.randn(1, 4, 8, 12, generator=g), torch.randn(1, 4, 11, generator=g), weak, [])
    pad = torch.zeros(1, 32, 48, dtype=torch.bool)
    pad[:, :, :24] = True  # the left half of the view is real
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 32, 48, dtype=torch.bool)}]
    box, flipped = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([False])
    for mask, grad_in_padding in ((pad, False), (None, True)):
        weak.grad = None
        loss, _ = objective._contrastive(out_w, strong, box, flipped, targets, torch.tensor([True]),
                                         torch.Generator().manual_seed(1), mask)
        loss.backward()
        per_pixel = weak.grad.abs().sum(1)[0]  # (8, 12)
        assert per_pixel[:, :6].gt(0).any()
        assert bool(per_pixel[:, 6:].gt(0).any()) == grad_in_padding


def test_uncertain_points_avoid_padding():
    logits = torch.full((2, 16, 16), 10.0)  # confident on real pixels
    logits[:, :, 8:] = 0.0  # maximally uncertain in the padding (right half)
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, :, :8] = True
    g = torch.Generator().manual_seed(0)
    coords = uncertain_points(logits, 40, 3.0, 0.75, g, valid=valid)
    assert coords[:, :30, 0].lt(0.5).all()  # the 30 importance points all lie on real pixels
    coords = uncertain_points(logits, 40, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert coords[:, :30, 0].ge(0.5).float().mean() > 0.9  # without the mask they would sit in the padding


def test_real_extent_and_uniform_points_stay_on_real_pixels():
    pad = torch.zeros(2, 16, 24, dtype=torch.bool)
    pad[0, :8, :12] = True  # a quarter of the frame is real
    pad[1] = True  # the batch's largest image: no padding
    extent = real_extent(pad)
    torch.testing.assert_close(extent, torch.tensor([[0.5, 0.5], [1.0, 1.0]]))
    logits = torch.zeros(2, 16, 24)
    coords = uncertain_points(logits, 400, 3.0, 0.75, torch.Generator().manual_seed(0), extent=extent)
    assert coords[0].lt(0.5).all()  # the importance share and the uniform share alike
    assert coords[1].ge(0.5).any()  # the unpadded image still gets points everywhere


def _padded_case(device: torch.device):
    """One 16 x 24 frame whose left half (12 columns) is real; one instance in columns 0-5."""
    pad = torch.zeros(1, 16, 24, dtype=torch.bool, device=device)
    pad[..., :12] = True
    gt = torch.zeros(1, 16, 24, dtype=torch.bool, device=device)
    gt[0, :, :6] = True
    return pad, {"labels": torch.tensor([1], device=device), "masks": gt}


@pytest.mark.parametrize("num_points", [300, 2000], ids=["points", "dense"])  # 16 x 24 = 384 pixels
def test_matching_is_not_swayed_by_predictions_on_padding(device, num_points):
    """Query 0 is exact on the real pixels but fires on the padding; query 1 misses two columns of
    the instance. On real pixels query 0 is the match; counting the padding would pick query 1."""
    pad, target = _padded_case(device)
    logits = torch.full((2, 16, 24), -10.0, device=device)
    logits[0, :, :6] = 10.0
    logits[0, :, 12:] = 10.0
    logits[1, :, :4] = 10.0
    classes = torch.zeros(2, 3, device=device)
    extent = real_extent(pad)[0]
    on_real = hungarian_match(classes, logits, target["labels"], target["masks"], num_points,
                              generator=torch.Generator(device).manual_seed(0), extent=extent)
    whole = hungarian_match(classes, logits, target["labels"], target["masks"], num_points,
                            generator=torch.Generator(device).manual_seed(0))
    assert on_real[0].tolist() == [0] and whole[0].tolist() == [1]
    assert on_real[0].device == device


@pytest.mark.parametrize("num_points", [256, 512], ids=["points", "dense"])  # 16 x 24 = 384 pixels
def test_set_loss_is_blind_to_anything_predicted_on_padding(device, num_points):
    """Matching, uncertain and uniform points all lie on real pixels: changing the logits beyond the
    first padding column (which bilinear sampling at the edge may touch) leaves every term unchanged."""
    pad, target = _padded_case(device)
    g = torch.Generator(device).manual_seed(0)
    logits = torch.randn(1, 3, 16, 24, generator=g, device=device)
    classes = torch.randn(1, 3, 3, generator=g, device=device)
    changed = logits.clone()
    changed[..., 13:] = 50 * torch.randn(1, 3, 16, 11, generator=g, device=device)

    def loss(mask_logits, pad_mask):
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(0)
        out = SegOutput(mask_logits, classes, torch.zeros(1, 4, 4, 6, device=device), [])
        return set_loss(out, [target], pad_mask=pad_mask, num_points=num_points)

    same, moved = loss(logits, pad), loss(changed, pad)
    for key in ("loss_class", "loss_mask", "loss_dice"):
        assert torch.equal(same[key], moved[key]), key
    assert not torch.equal(loss(logits, None)["loss_mask"], loss(changed, None)["loss_mask"])


def test_paper_configs_state_native_sizes_and_the_demo_stays_square():
    from types import SimpleNamespace

    from sskd_ray.config import ConfigError, load_config
    from sskd_ray.train.data import ViewSizes
    from sskd_ray.train.pipeline import _stage_data

    paths = SimpleNamespace(labeled_json="l.json", val_json="v.json", val_images="v", test_json="", test_images="",
                            unlabeled_json="u.json")
    city = _stage_data(load_config("configs/cityscapes_10pct.yaml"), paths, 518)
    assert ViewSizes.from_data(city) == ViewSizes(1024, (512, 1024), (0.5, 2.0))
    assert city["inference"] == {"short_side": 1024, "max_side": 2048}
    ade = _stage_data(load_config("configs/ade20k.yaml"), paths, 518)
    assert ViewSizes.from_data(ade) == ViewSizes(512, (512, 512), (0.5, 2.0))
    assert ade["inference"] == {"short_side": 512, "max_side": 2048}
    demo = _stage_data(load_config("configs/default.yaml"), paths, 128)
    assert ViewSizes.from_data(demo) == ViewSizes(128, (128, 128), (1.0, 1.0))
    assert demo["inference"] == {"short_side": 128, "max_side": 0}
    with pytest.raises(ConfigError, match="scale_jitter"):
        load_config(None, ["data.scale_jitter=[2.0, 1.0]"])


# ---- batches drawn ahead on a thread ---------------------------------------------------------------

def test_prefetched_batches_equal_direct_draws_from_a_resumed_iteration(builtin_dir):
    from sskd_ray.train.data import ViewSizes, build_training_set, draw_batch
    from sskd_ray.train.prefetch import BatchPrefetcher

    ts = build_training_set(str(builtin_dir / "train.json"), str(builtin_dir / "images"), 32)
    sizes = ViewSizes(32, (24, 40), (0.8, 1.2))

    def make(i):
        return draw_batch(ts, i, 7, 2, 0, 1, 0.0, sizes)

    got = list(BatchPrefetcher(make, 3, 6, depth=2))
    assert [it for it, _ in got] == [3, 4, 5]
    for it, batch in got:
        direct = make(it)
        assert torch.equal(batch.weak, direct.weak) and torch.equal(batch.strong, direct.strong)
        assert batch.weak.shape == (2, 3, 24, 40) and batch.pad_mask.shape == (2, 24, 40)
        assert all(torch.equal(a["masks"], b["masks"]) for a, b in zip(batch.targets, direct.targets))


def test_prefetcher_hands_over_the_skipped_record_and_errors():
    from sskd_ray.train.prefetch import BatchPrefetcher

    record: dict = {}

    def make(i):
        record[f"bad{i}"] = "unreadable"  # what draw_batch does for a broken image
        if i == 4:
            raise RuntimeError("no readable training image at iteration 4")
        return i

    seen = []
    prefetch = BatchPrefetcher(make, 0, 6, depth=2, skipped=lambda: record)
    with pytest.raises(RuntimeError, match="iteration 4"):
        for it, batch in prefetch:
            assert batch == it
            seen.append(sorted(prefetch.skipped))  # a copy as of this batch, however far the thread ran
    assert seen == [[f"bad{j}" for j in range(i + 1)] for i in range(4)]


def test_prefetcher_overlaps_slow_batches_with_the_step():
    import time

    from sskd_ray.train.prefetch import BatchPrefetcher

    def make(i):
        time.sleep(0.1)  # decoding
        return i

    waits = []
    prefetch = BatchPrefetcher(make, 0, 5, depth=2)
    for _ in prefetch:
        waits.append(prefetch.waited)
        time.sleep(0.25)  # a step longer than a batch: the next one is ready when it ends
    assert waits[0] > 0.05 and max(waits[1:]) < 0.05
    inline = BatchPrefetcher(make, 0, 2, depth=0)  # no thread: every batch is waited for in full
    assert [i for i, _ in inline] == [0, 1] and inline.waited >= 0.1


@pytest.mark.parametrize("seed", range(3))
def test_window_resampled_masks_equal_scaling_the_whole_mask(seed):
    from sskd_ray.train.data import _resize_masks

    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 30, 50), bool)
    for m in masks:
        y, x = rng.integers(0, 20), rng.integers(0, 40)
        m[y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = True
    pair = make_views(torch.zeros(3, 30, 50), 24, torch.Generator().manual_seed(seed), crop_size=(32, 32),
                      scale_jitter=(0.7, 2.0), photometric=False)
    whole = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=pair.scaled_size, mode="bilinear",
                          align_corners=False)[:, 0] > 0.5
    if pair.weak_flipped:
        whole = whole.flip(-1)
    top, left = pair.offset
    window = whole[:, top:top + 32, left:left + 32]
    expected = F.pad(window, (0, 32 - window.shape[-1], 0, 32 - window.shape[-2]))
    assert torch.equal(_resize_masks(masks, pair), expected)
