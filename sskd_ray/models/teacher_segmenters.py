"""How the teacher drives its box-prompted segmenter: transformers' `Sam2Model` (default) or Meta's
`sam2` package (sam2_backend.py). A backend is a stateless object of plain functions over the model,
so the model itself stays `teacher.segmenter` and its parameter names (freeze prefixes,
checkpoints) are the library's own.
"""
from __future__ import annotations

import torch
from torch import nn


class SegmenterBackend:
    """The interface; see TransformersSam2 for the meaning of each function."""
    name = ""
    backbone_prefixes: tuple[str, ...] = ()

    def image_size(self, model: nn.Module) -> int:
        raise NotImplementedError

    def feature_width(self, model: nn.Module) -> int:
        raise NotImplementedError

    def encode(self, model: nn.Module, pixels: torch.Tensor):
        raise NotImplementedError

    def decode(self, model: nn.Module, embeddings, boxes_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embedding_map(self, embeddings) -> torch.Tensor:
        raise NotImplementedError

    def select(self, embeddings, b: int):
        raise NotImplementedError


class TransformersSam2(SegmenterBackend):
    name = "transformers"
    backbone_prefixes = ("segmenter.vision_encoder",)

    def image_size(self, model: nn.Module) -> int:
        return int(model.config.prompt_encoder_config.image_size)  # the frame its box prompts live in

    def feature_width(self, model: nn.Module) -> int:
        return int(model.config.vision_config.fpn_hidden_size)

    def encode(self, model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) normalised -> SAM2's image embeddings, as `Sam2Model.get_image_embeddings`
        computes them but without its no_grad, so the vision encoder can be trained."""
        b = pixels.shape[0]
        feats = list(model.get_image_features(pixels, return_dict=True).fpn_hidden_states)
        feats[-1] = feats[-1] + model.no_memory_embedding
        return [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(feats, model.backbone_feature_sizes)]

    def decode(self, model: nn.Module, embeddings: list[torch.Tensor], boxes_px: torch.Tensor):
        """Boxes (B, n, 4) xyxy in SAM2-frame pixels -> mask logits (B, n, S/4, S/4) over the square and
        predicted IoU (B, n), a probability (the IoU head ends in a sigmoid)."""
        out = model(image_embeddings=embeddings, input_boxes=boxes_px, multimask_output=False)
        return out.pred_masks[:, :, 0], out.iou_scores[:, :, 0]

    def embedding_map(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return embeddings[-1]  # (B, C, S/16, S/16)

    def select(self, embeddings: list[torch.Tensor], b: int) -> list[torch.Tensor]:
        return [e[b:b + 1] for e in embeddings]


HF_SAM2 = TransformersSam2()
