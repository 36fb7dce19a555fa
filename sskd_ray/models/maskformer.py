"""A light Mask2Former-style model: encoder -> neck -> transformer decoder + pixel embedding head.

The decoder follows the structure described in Mask2Former (Cheng et al., 2022): learned queries
attend round-robin to the three coarser neck levels (masked attention: each query only sees where
its previous mask prediction is foreground), then to each other, then an FFN; every layer predicts
class logits and mask embeddings that are dotted with per-pixel features at stride 4. Written here
from the paper; no code copied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sskd_ray.models.outputs import SegOutput


def sine_position_encoding(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """(h*w, dim) 2-D sine/cosine encoding; half the channels for y, half for x."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq  # (h, quarter)
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq  # (w, quarter)
    y = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    x = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    pos = torch.cat([y, x], dim=-1).reshape(h * w, 4 * quarter)
    return F.pad(pos, (0, dim - 4 * quarter))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, q_pos: torch.Tensor, memory: torch.Tensor, mem_pos: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.norms[0](q + self.drop(self.cross(q + q_pos, memory + mem_pos, memory, attn_mask=attn_mask)[0]))
        q = self.norms[1](q + self.drop(self.self_attn(q + q_pos, q + q_pos, q)[0]))
        return self.norms[2](q + self.drop(self.ffn(q)))


class MaskDecoder(nn.Module):
    def __init__(self, dim: int, num_queries: int, num_classes: int, num_layers: int, num_heads: int,
                 ffn_dim: int, dropout: float, num_levels: int = 3, masked_attention: bool = True):
        super().__init__()
        self.num_heads, self.num_levels, self.masked_attention = num_heads, num_levels, masked_attention
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                       nn.Linear(dim, dim))

    def predict(self, q: torch.Tensor, pixel: torch.Tensor, next_size: tuple[int, int] | None):
        q = self.out_norm(q)
        class_logits = self.class_head(q)  # (B, Q, C+1)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(q), pixel)
        attn_mask = None
        if self.masked_attention and next_size is not None:
            small = F.interpolate(mask_logits.detach(), size=next_size, mode="bilinear", align_corners=False)
            attn_mask = small.flatten(2).sigmoid() < 0.5  # True = not allowed to attend
            # a query with an empty mask attends everywhere (written with & rather than an indexed
            # assignment, which exports to an ONNX Where on booleans that onnxruntime lacks)
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            attn_mask = attn_mask.repeat_interleave(self.num_heads, dim=0)  # (B*heads, Q, h*w)
        return class_logits, mask_logits, attn_mask

    def forward(self, levels: list[torch.Tensor], pixel: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """levels: coarse neck maps (B, C, h_l, w_l); pixel: (B, C, H/4, W/4). Returns per-layer predictions."""
        b = pixel.shape[0]
        memories, positions, sizes = [], [], []
        for i, level in enumerate(levels):
            h, w = level.shape[-2:]
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[i])  # (B, h*w, C)
            positions.append(sine_position_encoding(h, w, level.shape[1], level.device).expand(b, -1, -1))
            sizes.append((h, w))
        q = self.query_feat.weight.expand(b, -1, -1)
        q_pos = self.query_pos.weight.expand(b, -1, -1)
        class_logits, mask_logits, attn_mask = self.predict(q, pixel, sizes[0])
        preds = [(mask_logits, class_logits)]
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            q = layer(q, q_pos, memories[lvl], positions[lvl], attn_mask)
            nxt = sizes[(i + 1) % self.num_levels] if i + 1 < len(self.layers) else None
            class_logits, mask_logits, attn_mask = self.predict(q, pixel, nxt)
            preds.append((mask_logits, class_logits))
        return preds


class EmbeddingHead(nn.Module):
    """Pixel projection head for the contrastive loss: conv-ReLU-conv, L2-normalised over channels.
    `kernel` is the first conv's size: 3, or 1 for a per-pixel MLP (DenseCL's dense projection head),
    which at stride 4 costs a ninth of the 3 x 3's FLOPs."""

    def __init__(self, in_dim: int, embed_dim: int, kernel: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, in_dim, kernel, padding=kernel // 2), nn.ReLU(),
                                 nn.Conv2d(in_dim, embed_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class MaskFormerModel(nn.Module):
    """Images in [0, 1], (B, 3, H, W) -> SegOutput. Normalisation for the encoder happens inside."""

    def __init__(self, encoder: nn.Module, neck: nn.Module, dim: int, decoder: MaskDecoder, embed_dim: int,
                 embed_kernel: int = 3):
        super().__init__()
        self.encoder, self.neck, self.decoder = encoder, neck, decoder
        self.pixel_proj = nn.Conv2d(dim, dim, 1)
        self.embed_head = EmbeddingHead(dim, embed_dim, embed_kernel)
        self.channels_last = False  # `use_channels_last` sets it (training a CNN encoder)
        mean, std = encoder.norm
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None,
                decode: int | None = None) -> SegOutput:
        """`image_sizes` (content sizes in a padded batch) is accepted for the shared model contract and
        not used: the student sees the padded frame as is; post-processing crops the content back out.
        `decode`: only the first `decode` images go through the mask decoder (mask and class logits for
        those), every image gets embeddings; the training step's strong view needs embeddings only."""
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.neck(self.encoder(x))  # finest first, all `dim` wide
        n = images.shape[0] if decode is None else decode
        pixel = self.pixel_proj(maps[0][:n])  # (n, C, H/4, W/4)
        preds = self.decoder([m[:n] for m in maps[1:][::-1]], pixel)  # coarsest level first, as in Mask2Former
        mask_logits, class_logits = preds[-1]
        return SegOutput(mask_logits, class_logits, self.embed_head(maps[0]), aux=preds[:-1])


def use_channels_last(model: nn.Module) -> bool:
    """Channels-last memory for a maskformer with a CNN encoder (EfficientNet, ResNet): oneDNN's
    depthwise convolutions run their backward several times faster in that layout on CPU. Same
    arithmetic, other summation order. Returns whether it switched."""
    if not isinstance(model, MaskFormerModel) or type(model.encoder).__name__ not in ("EfficientNetEncoder", "ResNetEncoder"):
        return False
    model.to(memory_format=torch.channels_last)
    model.channels_last = True
    return True


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
