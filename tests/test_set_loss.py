import torch

from sskd_ray.losses.matcher import hungarian_match, pairwise_dice
from sskd_ray.losses.set_loss import dice_loss, set_loss, single_set_loss
from sskd_ray.models.outputs import SegOutput


def _two_squares():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True
    masks[1, 8:, 8:] = True
    return masks


def test_matching_recovers_the_obvious_assignment():
    gt = _two_squares()
    mask_logits = torch.full((3, 16, 16), -6.0)
    mask_logits[2][gt[0]] = 6.0  # query 2 predicts gt 0
    mask_logits[0][gt[1]] = 6.0  # query 0 predicts gt 1
    class_logits = torch.zeros(3, 4)
    q, g = hungarian_match(class_logits, mask_logits, torch.tensor([1, 2]), gt, num_points=512,
                           generator=torch.Generator().manual_seed(0))
    assert dict(zip(g.tolist(), q.tolist())) == {0: 2, 1: 0}
    empty_q, empty_g = hungarian_match(class_logits, mask_logits, torch.zeros(0, dtype=torch.long), gt[:0])
    assert empty_q.numel() == 0 and empty_g.numel() == 0


def test_dice_by_hand():
    # p = sigmoid(0) = .5 at 4 points, gt = [1, 1, 0, 0]: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    logits, gt = torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(dice_loss(logits, gt), torch.tensor([0.4]))
    assert torch.allclose(pairwise_dice(logits, gt), torch.tensor([[0.4]]))


def _output(mask_logits, class_logits):
    return SegOutput(mask_logits, class_logits, torch.zeros(1, 2, 4, 4), aux=[(mask_logits, class_logits)])


def test_set_loss_prefers_the_right_prediction_and_handles_empty_images():
    gt = _two_squares()
    target = [{"labels": torch.tensor([0, 1]), "masks": gt}]
    good_masks = torch.where(gt, 8.0, -8.0)[None]  # (1, 2, 16, 16)
    good_classes = torch.tensor([[[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]]])
    bad = set_loss(_output(-good_masks, good_classes.flip(-1)), target, num_points=256)
    good = set_loss(_output(good_masks.clone().requires_grad_(), good_classes), target, num_points=256)
    assert good["loss"] < 0.1 * bad["loss"]
    assert set(good) == {"loss_class", "loss_mask", "loss_dice", "loss"}
    # an image with no instances: all queries should say "no object"; mask terms are zero and keep no graph
    logits = torch.zeros(1, 2, 16, 16, requires_grad=True)
    classes = torch.zeros(1, 2, 3, requires_grad=True)
    empty = set_loss(_output(logits, classes),
                     [{"labels": torch.zeros(0, dtype=torch.long), "masks": gt[:0]}], num_points=64)
    assert empty["loss_mask"].item() == 0.0 and empty["loss_dice"].item() == 0.0
    # CE over 3 equal logits with target no-object: log 3, weighted 2, counted for final + 1 aux layer
    assert torch.allclose(empty["loss_class"], torch.tensor(2 * 2 * torch.log(torch.tensor(3.0)).item()))
    empty["loss"].backward()
    assert logits.grad is None and classes.grad is not None


def test_matching_cost_and_point_losses_stay_fp32_under_bf16_autocast(device):
    """Inside bf16 autocast (the GPU training setting) the matching cost and the point-sampled mask
    losses are computed in fp32 and equal the fp32 values; bf16 would round them by ~1e-2."""
    from sskd_ray.losses.matcher import match_cost

    torch.manual_seed(0)
    gt = _two_squares().to(device)
    mask_logits = torch.randn(5, 16, 16, device=device)
    class_logits = torch.randn(5, 4, device=device)
    labels = torch.tensor([1, 2], device=device)
    plain = match_cost(class_logits, mask_logits, labels, gt, 256, generator=torch.Generator(device).manual_seed(0))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mixed = match_cost(class_logits.bfloat16(), mask_logits.bfloat16(), labels, gt, 256,
                           generator=torch.Generator(device).manual_seed(0))
    assert mixed.dtype == torch.float32
    # inputs arrive in bf16 (rounded once); the arithmetic after that is fp32
    reference = match_cost(class_logits.bfloat16().float(), mask_logits.bfloat16().float(), labels, gt, 256,
                           generator=torch.Generator(device).manual_seed(0))
    torch.testing.assert_close(mixed, reference)
    assert (plain - mixed).abs().max() < 0.05
    out = SegOutput(mask_logits[None].bfloat16().requires_grad_(), class_logits[None].bfloat16(),
                    torch.zeros(1, 2, 4, 4, device=device))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        terms = set_loss(out, [{"labels": labels, "masks": gt}], num_points=256)
    assert terms["loss_mask"].dtype == torch.float32 and terms["loss_dice"].dtype == torch.float32
    q, g = __import__("sskd_ray.losses.matcher", fromlist=["hungarian_match"]).hungarian_match(
        class_logits, mask_logits, labels, gt, 256)
    assert q.device.type == device.type and g.device.type == device.type


def test_dense_mask_terms_by_hand():
    """A 2 x 2 prediction with 16 points asked for takes every pixel once. Logits 0 (p = .5) against
    a mask covering the top row: BCE log 2 per pixel; Dice 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4.
    One query, one instance, weights 1: loss_mask = log 2, loss_dice = 0.4, whatever the seed."""
    gt = torch.tensor([[[True, True], [False, False]]])
    out = SegOutput(torch.zeros(1, 1, 2, 2), torch.tensor([[[5.0, -5.0]]]), torch.zeros(1, 2, 2, 2))
    terms = single_set_loss(out.class_logits, out.mask_logits, [{"labels": torch.tensor([0]), "masks": gt}], 1.0,
                            class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=16)
    assert torch.allclose(terms["loss_mask"], torch.log(torch.tensor(2.0)))
    assert torch.allclose(terms["loss_dice"], torch.tensor(0.4))


def test_dense_targets_are_area_averages_and_padding_is_left_out():
    """Ground truth at 4x the prediction's resolution enters as the covered share of each prediction
    pixel; with the right half padded, only the left column of a 2 x 2 prediction counts."""
    from sskd_ray.losses.point_sampling import grid_real, grid_targets

    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4, :2] = True  # half of the top-left 4 x 4 block
    torch.testing.assert_close(grid_targets(gt, (2, 2)), torch.tensor([[0.5, 0.0, 0.0, 0.0]]))
    real = grid_real(torch.tensor([[0.5, 1.0]]), (2, 2), torch.device("cpu"))
    assert real.tolist() == [[True, False, True, False]]
    # logits on the padded column do not move the loss; on the real column they do
    pad = torch.zeros(1, 8, 8, dtype=torch.bool)
    pad[..., :4] = True
    target = [{"labels": torch.tensor([0]), "masks": gt}]
    classes = torch.tensor([[[5.0, -5.0]]])

    def loss(logits):
        return set_loss(SegOutput(logits, classes, torch.zeros(1, 2, 2, 2)), target, pad_mask=pad, num_points=64)["loss"]
    base = torch.zeros(1, 1, 2, 2)
    moved_pad, moved_real = base.clone(), base.clone()
    moved_pad[..., 1] = 9.0
    moved_real[..., 0] = 9.0
    assert torch.equal(loss(base), loss(moved_pad))
    assert not torch.equal(loss(base), loss(moved_real))
