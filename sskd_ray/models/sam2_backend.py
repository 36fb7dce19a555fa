"""Meta's `sam2` package (PyPI `sam2`, import `sam2`) as the teacher's segmenter, beside
transformers' `Sam2Model`: `build_sam2(config, checkpoint)` loads Meta's official `.pt` files, and
the teacher drives the model's image encoder, prompt encoder and mask decoder directly, as Meta's
`SAM2ImagePredictor` does (`set_image` / `_predict`), without the predictor itself: the predictor
imports torchvision (`sam2/utils/transforms.py`), whose wheels pin a torch build.

Install with `pip install .[sam2]`, or, next to a CPU torch, `pip install --no-deps sam2==1.1.0`
plus `hydra-core iopath` (`make install-sam2`): a plain `pip install sam2` pulls torchvision and with
it a CUDA torch. Only the image path of SAM2 is used; its video-memory modules stay frozen.
"""
from __future__ import annotations

import torch
from torch import nn

from sskd_ray.models.teacher_segmenters import SegmenterBackend

USED_PARTS = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
CONFIGS = {  # short names of the package's own Hydra configs
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def build_meta_sam2(config: str, checkpoint: str = "") -> nn.Module:
    """Meta's SAM2 from one of its configs (a short name above or the package path) and an official
    `.pt` checkpoint ("" = random weights). The video-memory parts are frozen: the teacher never uses them."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError as err:  # an optional extra: say which
        raise ImportError("segmenter_backend 'sam2' needs Meta's sam2 package: `pip install .[sam2]` (or "
                          "`make install-sam2` next to a CPU torch)") from err
    model = build_sam2(CONFIGS.get(config, config), checkpoint or None, device="cpu", mode="eval")
    for name, param in model.named_parameters():
        if not name.startswith(USED_PARTS):
            param.requires_grad_(False)
    return model


class MetaSam2(SegmenterBackend):
    name = "sam2"
    backbone_prefixes = ("segmenter.image_encoder",)

    def image_size(self, model: nn.Module) -> int:
        return int(model.image_size)

    def feature_width(self, model: nn.Module) -> int:
        return int(model.sam_prompt_encoder.embed_dim)

    def encode(self, model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
        """As SAM2ImagePredictor.set_image: backbone features, no-memory embedding added to the last."""
        b, s = pixels.shape[0], pixels.shape[-1]
        _, feats, _, _ = model._prepare_backbone_features(model.forward_image(pixels))
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)][-len(feats):]
        return [f.permute(1, 2, 0).reshape(b, -1, *size) for f, size in zip(feats, sizes)]

    def decode(self, model: nn.Module, embeddings: list[torch.Tensor], boxes_px: torch.Tensor):
        """Boxes (B, n, 4) xyxy in SAM2-frame pixels -> mask logits (B, n, S/4, S/4), IoU (B, n) in [0, 1]."""
        masks, ious = [], []
        for b in range(boxes_px.shape[0]):  # the decoder repeats one image's features over its prompts
            corners = boxes_px[b].reshape(-1, 2, 2)
            labels = torch.tensor([2, 3], device=corners.device).repeat(corners.shape[0], 1)  # box corners
            sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
            low_res, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=embeddings[-1][b:b + 1], image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
                repeat_image=True, high_res_features=[e[b:b + 1] for e in embeddings[:-1]])
            masks.append(low_res[:, 0])
            ious.append(iou[:, 0] if model.iou_prediction_use_sigmoid else iou[:, 0].sigmoid())
        return torch.stack(masks), torch.stack(ious)

    def embedding_map(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return embeddings[-1]

    def select(self, embeddings: list[torch.Tensor], b: int) -> list[torch.Tensor]:
        return [e[b:b + 1] for e in embeddings]


META_SAM2 = MetaSam2()
