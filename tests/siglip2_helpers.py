"""Fixtures shared by the SigLIP 2 tests: a small Gemma-kind SentencePiece model trained here (same
trainer settings as Gemma's: BPE, byte fallback, split digits, no dummy prefix, whitespace kept, ids
pad 0 / eos 1 / bos 2 / unk 3) and Hugging Face folders that hold it as the released ones do."""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import sentencepiece as spm

CAPTIONS = [
    "a red square on white",
    "a blue circle in the dark",
    "two green triangles",
    "a photo of a cat",
    "a dog running on grass",
    "handwritten number seven 12345",
    "über café naïve",
]


@lru_cache(maxsize=1)
def gemma_proto() -> bytes:
    """Serialized SentencePiece model of the Gemma kind (330 pieces; 256 of them byte fallbacks)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS * 4),
        model_writer=buf,
        vocab_size=330,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def write_gemma_tokenizer(folder: Path, length: int, padding_side: str | None = None) -> Path:
    """tokenizer.model + tokenizer_config.json as the google/siglip2-* folders have them (no
    padding_side there unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(gemma_proto())
    cfg = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": False,
        "add_eos_token": True,
        "model_max_length": length,
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
    }
    if padding_side:
        cfg["padding_side"] = padding_side
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder
