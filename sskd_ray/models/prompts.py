"""Class names as Grounding-DINO text prompts, split into chunks that fit its text encoder.

Grounding-DINO reads at most `max_text_len` tokens (256 for the released models). A vocabulary
longer than that (ADE20K's 150 names, LVIS) is split into several prompts `"a. b. c."`, each holding
whole class names, and the detector runs once per chunk; this is how the Grounding-DINO / GLIP
authors evaluate large vocabularies (one "chunked" prompt per group of categories).

`PromptChunks` keeps, per chunk, its token ids and, per class, the chunk and the token span
[start, end) of its name inside that chunk's ids: the span is what Grounding-DINO's loss calls the
class's label map (`build_label_maps` splits at the delimiter ids below).
"""
from __future__ import annotations

from dataclasses import dataclass

DELIMITER_IDS = (0, 101, 102, 1012, 1029)  # [PAD] [CLS] [SEP] . ?  (Grounding-DINO's SPECIAL_TOKENS + pad)


def build_prompt(class_names: list[str]) -> str:
    return " ".join(f"{name}." for name in class_names)


def phrase_spans(input_ids: list[int]) -> list[tuple[int, int]]:
    """Token spans [start, end) of the phrases between delimiters, in order."""
    spans, start = [], None
    for t, tok in enumerate(input_ids + [0]):
        if tok in DELIMITER_IDS:
            if start is not None:
                spans.append((start, t))
            start = None
        elif start is None:
            start = t
    return spans


@dataclass
class PromptChunks:
    input_ids: list[list[int]]  # per chunk
    class_chunk: list[int]  # per class: its chunk
    class_span: list[tuple[int, int]]  # per class: token span inside its chunk
    chunk_classes: list[list[int]]  # per chunk: its classes in prompt order


def chunk_prompts(class_names: list[str], tokenizer, max_text_len: int) -> PromptChunks:
    """Greedy split into prompts of at most `max_text_len` tokens, whole names per chunk."""
    names = [n.strip() for n in class_names]
    if not names:
        raise ValueError("the teacher needs at least one class name")
    chunks: list[list[int]] = []
    current: list[int] = []
    for c in range(len(names)):
        trial = current + [c]
        if len(_encode(tokenizer, [names[i] for i in trial])) <= max_text_len:
            current = trial
            continue
        if not current:
            raise ValueError(f"class name '{names[c]}' alone tokenises into more than max_text_len={max_text_len} "
                             f"tokens")
        chunks.append(current)
        current = [c]
        if len(_encode(tokenizer, [names[c]])) > max_text_len:
            raise ValueError(f"class name '{names[c]}' alone tokenises into more than max_text_len={max_text_len} "
                             f"tokens")
    chunks.append(current)
    ids, class_chunk, class_span = [], [0] * len(names), [(0, 0)] * len(names)
    for k, members in enumerate(chunks):
        chunk_ids = _encode(tokenizer, [names[i] for i in members])
        spans = phrase_spans(chunk_ids)
        if len(spans) != len(members):
            raise ValueError(f"prompt chunk {k} tokenised into {len(spans)} phrases, expected {len(members)}: a class "
                             f"name contains a delimiter ('.', '?') among {[names[i] for i in members]}")
        for c, span in zip(members, spans):
            class_chunk[c], class_span[c] = k, span
        ids.append(chunk_ids)
    return PromptChunks(ids, class_chunk, class_span, chunks)


def _encode(tokenizer, names: list[str]) -> list[int]:
    return list(tokenizer(build_prompt(names))["input_ids"])
