"""`tokenizer.json` (Hugging Face `tokenizers`' own format), read with the `tokenizers` library.

A SigLIP 2 folder saved by transformers 5 (`GemmaTokenizer`, `Siglip2Tokenizer`) holds only
`tokenizer.json` + `tokenizer_config.json`, no SentencePiece model; a SigLIP 1 tokenizer converted by
transformers (`T5TokenizerFast`) may come the same way. `JsonPieces` wraps such a file behind the few
`SentencePieceProcessor` methods `siglip.tokenizer.Tokenizer` uses, so the kind's rules (lowercasing,
no BOS, EOS appended and kept on truncation, right padding with the model's pad id) stay in one
place. The file's own post-processor, truncation and padding are not used: `encode` returns the
pieces of the text only.

Special tokens are found by name: the folder's `tokenizer_config.json` names them (`eos_token`,
`pad_token`, `bos_token`, `unk_token`); without one, the kind's usual names (Gemma: `<eos>`, `<pad>`,
`<bos>`, `<unk>`; SigLIP 1: `</s>`, `<pad>`, `<unk>`).

`tokenizers` is an optional dependency (`pip install 'siglip[tokenizers]'`; transformers installs it
too): it comes with the Hugging Face Hub client, which the offline core does not need.
"""

from __future__ import annotations

import json
from typing import Any

EXTRA = "pip install 'siglip[tokenizers]'"
SPECIAL_NAMES = ("eos_token", "pad_token", "bos_token", "unk_token")
DEFAULT_SPECIALS = {
    "gemma": {"eos_token": "<eos>", "pad_token": "<pad>", "bos_token": "<bos>", "unk_token": "<unk>"},
    "siglip": {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
}


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(f"reading tokenizer.json needs Hugging Face's `tokenizers` library: {EXTRA}") from e
    return tokenizers


def special_names(config: dict) -> dict[str, str]:
    """The special tokens a `tokenizer_config.json` (or `special_tokens_map.json`) names, as strings
    (transformers writes them as strings, older versions as {"content": ...} objects)."""
    out = {}
    for key in SPECIAL_NAMES:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            out[key] = value
    return out


class JsonPieces:
    """A tokenizer.json with the SentencePieceProcessor calls `siglip.tokenizer` makes.
    `specials`: token names from the folder's tokenizer_config.json (missing ones: the kind's)."""

    def __init__(self, data: bytes, kind: str, specials: dict[str, str] | None = None):
        tokenizers = _tokenizers()
        try:
            self.tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise ValueError(f"not a tokenizer.json that Hugging Face tokenizers reads: {e}") from e
        self.tok.no_truncation()  # Tokenizer truncates (keeping EOS) and pads itself
        self.tok.no_padding()
        self.names = {**DEFAULT_SPECIALS.get(kind, {}), **(specials or {})}

    def _id(self, key: str) -> int:
        name = self.names.get(key)
        found = self.tok.token_to_id(name) if name else None
        return -1 if found is None else int(found)

    def eos_id(self) -> int:
        return self._id("eos_token")

    def pad_id(self) -> int:
        return self._id("pad_token")

    def bos_id(self) -> int:
        return self._id("bos_token")

    def unk_id(self) -> int:
        return self._id("unk_token")

    def get_piece_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def id_to_piece(self, i: int) -> str:
        return str(self.tok.id_to_token(i))

    def encode(self, text: str) -> list[int]:
        """The text's ids without any special token (no BOS, no EOS), untruncated."""
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=False))


def read_config_specials(text: str) -> dict[str, str]:
    """`special_names` of a tokenizer_config.json's text."""
    return special_names(json.loads(text))
