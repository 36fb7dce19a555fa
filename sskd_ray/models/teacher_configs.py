"""Architectures of the teacher's two models, and which detector class a checkpoint needs.

- `full_teacher_configs`: mm-Grounding-DINO-L and SAM2.1-L as released. The detector's numbers are
  those of OpenMMLab's `configs/mm_grounding_dino/grounding_dino_swin-l_pretrain_obj365_goldg.py`
  (Swin-L 384: embed 192, depths 2/2/18/2, heads 6/12/24/48, window 12, drop path 0.2, features from
  all four stages `out_indices=(0, 1, 2, 3)`, `num_feature_levels=5`) on top of its base
  `grounding_dino_swin-t_pretrain_obj365.py` (900 queries, 6 + 6 layers, d_model 256, FFN 2048,
  BERT-base-uncased, 256 text tokens), which are also `MMGroundingDinoConfig`'s defaults.
- `tiny_teacher_configs`: the same layout at width 32 for CPU tests (random weights).
- `detector_class`: the model class from the checkpoint's `config.json`, never from its name.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import transformers
from huggingface_hub import try_to_load_from_cache
from transformers import (BertConfig, GroundingDinoConfig, MMGroundingDinoConfig, PreTrainedTokenizerFast, Sam2Config,
                          Sam2HieraDetConfig, Sam2VisionConfig, SwinConfig)

DETECTOR_CLASSES = {  # config.json `model_type` -> class name in transformers
    "grounding-dino": "GroundingDinoForObjectDetection",
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
}
_KIND_OF_CLASS = {cls: kind for kind, cls in DETECTOR_CLASSES.items()}


def _read_config_json(name_or_path: str) -> dict:
    local = Path(name_or_path) / "config.json"
    cached = local if local.is_file() else try_to_load_from_cache(name_or_path, "config.json")
    if not isinstance(cached, (str, Path)) or not Path(cached).is_file():
        cached = transformers.AutoConfig.from_pretrained(name_or_path).to_dict()  # hub download (fails clearly offline)
        return cached
    return json.loads(Path(cached).read_text())


def detector_class(name_or_path: str, forced: str = ""):
    """The detector class a checkpoint was saved from, read from its `config.json` (`architectures`,
    else `model_type`). `forced` ("grounding-dino" | "mm-grounding-dino" | "") must agree with it."""
    config = _read_config_json(name_or_path)
    kinds = {_KIND_OF_CLASS[a] for a in config.get("architectures") or [] if a in _KIND_OF_CLASS}
    if not kinds and config.get("model_type") in DETECTOR_CLASSES:
        kinds = {config["model_type"]}
    if len(kinds) != 1:
        raise ValueError(f"detector checkpoint '{name_or_path}': config.json names architectures "
                         f"{config.get('architectures')} / model_type '{config.get('model_type')}', not one of "
                         f"{sorted(DETECTOR_CLASSES)}")
    (kind,) = kinds
    if config.get("model_type") in DETECTOR_CLASSES and config["model_type"] != kind:
        raise ValueError(f"detector checkpoint '{name_or_path}': config.json's architectures say '{kind}' but its "
                         f"model_type is '{config['model_type']}'")
    if forced and forced != kind:
        raise ValueError(f"teacher.detector_kind is '{forced}' but the checkpoint '{name_or_path}' is a '{kind}' "
                         f"(config.json); loading it into the other class would drop weights")
    return getattr(transformers, DETECTOR_CLASSES[kind])


def build_tiny_bert_tokenizer(class_names: list[str]) -> tuple[PreTrainedTokenizerFast, int]:
    """A WordPiece tokenizer that keeps BERT's special ids ([PAD]=0, [CLS]=101, [SEP]=102, .=1012,
    ?=1029), which Grounding-DINO's loss relies on, for tiny random-weight teachers in tests."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [f"[unused{i}]" for i in range(1100)]
    for i, tok in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        vocab[i] = tok
    words = sorted({w for name in class_names for w in re.findall(r"[a-z0-9]+", name.lower())})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    for tok in words + letters + [f"##{c}" for c in letters] + ["-", "/", "_", "##_"]:
        if tok not in vocab:
            vocab.append(tok)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]"), len(vocab)


def tiny_teacher_configs(image_size: int, vocab_size: int, max_text_len: int = 32,
                         mm: bool = False) -> tuple[GroundingDinoConfig, Sam2Config]:
    swin = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=image_size,
                      out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=vocab_size)
    detector = (MMGroundingDinoConfig if mm else GroundingDinoConfig)(
        backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_queries=20, encoder_attention_heads=2, decoder_attention_heads=2,
        num_feature_levels=4, max_text_len=max_text_len)
    s = image_size
    hiera = Sam2HieraDetConfig(hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128], blocks_per_stage=[1, 1, 2, 1],
                               num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3],
                               window_size_per_stage=[4, 4, 4, 4], image_size=[s, s],
                               window_positional_embedding_background_size=[4, 4])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32,
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]])
    segmenter = Sam2Config(vision_config=vision, prompt_encoder_config={"hidden_size": 32, "image_size": s,
                                                                        "patch_size": 16},
                           mask_decoder_config={"hidden_size": 32})
    return detector, segmenter


def full_teacher_configs() -> tuple[MMGroundingDinoConfig, Sam2Config]:
    """mm-Grounding-DINO-L (Swin-L + BERT-base) and SAM2.1-L (Hiera-L) as released, for random-weight builds."""
    swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384,
                      drop_path_rate=0.2, out_features=["stage1", "stage2", "stage3", "stage4"])
    detector = MMGroundingDinoConfig(backbone_config=swin, text_config=BertConfig(), num_feature_levels=5,
                                     num_queries=900, encoder_layers=6, decoder_layers=6, d_model=256,
                                     encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_text_len=256)
    hiera = Sam2HieraDetConfig(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                               blocks_per_stage=[2, 6, 36, 4], num_attention_heads_per_stage=[2, 4, 8, 16],
                               global_attention_blocks=[23, 33, 43], window_size_per_stage=[8, 4, 16, 8],
                               image_size=[1024, 1024], window_positional_embedding_background_size=[7, 7])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144])
    return detector, Sam2Config(vision_config=vision)
