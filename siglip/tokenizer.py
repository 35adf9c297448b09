"""SentencePiece tokenizer with the text conventions of the released checkpoints.

Two kinds, as the checkpoints define them:
- "siglip" (SigLIP 1, the c4_en / multilingual vocabularies): canonicalise (lowercase, delete ASCII
  punctuation, collapse whitespace, strip), no BOS, EOS appended, padded with EOS;
- "gemma" (SigLIP 2, the 256k Gemma vocabulary; big_vision `lower | tok(model='gemma', bos='no',
  eos='sticky')`): lowercase only, no BOS, EOS appended, padded on the RIGHT with `<pad>` (id 0).
Both truncate keeping EOS last and pad to exactly `length`. No attention mask: the text tower sees the
padding and pools the last position.

The tokenizer file travels as its bytes (`Tokenizer.proto`), so a model file that holds them is
self-contained: a SentencePiece model (`fmt="sentencepiece"`: spiece.model, Gemma's tokenizer.model),
or a Hugging Face `tokenizer.json` (`fmt="tokenizer.json"`, read with the `tokenizers` library, an
optional dependency: see `siglip.tokenizer_json`) where a folder has no SentencePiece model, as
transformers 5 saves SigLIP 2's. Both give the same ids for the same vocabulary.
"""

from __future__ import annotations

import io
import re
import string
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch
from torch import Tensor

_PUNCT = str.maketrans("", "", string.punctuation)
_SPACE = re.compile(r"\s+")


def canonicalize(text: str) -> str:
    """'A photo of a Dog!!' -> 'a photo of a dog'."""
    return _SPACE.sub(" ", text.lower().translate(_PUNCT)).strip()


KINDS = ("siglip", "gemma")
SENTENCEPIECE, TOKENIZER_JSON = "sentencepiece", "tokenizer.json"
FORMATS = (SENTENCEPIECE, TOKENIZER_JSON)


def clean(text: str, kind: str) -> str:
    """The text a kind's SentencePiece model sees: canonicalised (siglip) or lowercased (gemma)."""
    return canonicalize(text) if kind == "siglip" else text.lower()


class Tokenizer:
    """`tokenizer(["a dog", ...]) -> LongTensor (n, length)`. `kind`: "siglip" or "gemma" (see above).
    `proto`: the tokenizer file's bytes, of format `fmt` (see above); `specials`: for a
    tokenizer.json, its special tokens by name as tokenizer_config.json gives them (`eos_token`,
    `pad_token`, ...; missing ones take the kind's usual names)."""

    def __init__(
        self,
        proto: bytes,
        length: int,
        kind: str = "siglip",
        fmt: str = SENTENCEPIECE,
        specials: dict[str, str] | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}: choose one of {KINDS}")
        if fmt not in FORMATS:
            raise ValueError(f"unknown tokenizer file format {fmt!r}: choose one of {FORMATS}")
        self.proto = bytes(proto)
        self.length = length
        self.kind, self.fmt, self.specials = kind, fmt, dict(specials or {})
        if fmt == SENTENCEPIECE:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        else:
            from siglip.tokenizer_json import JsonPieces  # `tokenizers` is an optional dependency

            self.sp = JsonPieces(self.proto, kind, self.specials)
        self.eos_id = self.sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"the {fmt} tokenizer has no EOS token; SigLIP needs one (id 1 in the released vocab)")
        self.pad_id = self.eos_id if kind == "siglip" else self.sp.pad_id()
        if self.pad_id < 0:
            raise ValueError(f"a gemma-kind tokenizer needs a <pad> token in its {fmt} file (id 0 in Gemma's)")

    @classmethod
    def from_file(cls, path: str | Path, length: int, kind: str = "siglip") -> Tokenizer:
        """A SentencePiece model, or a tokenizer.json (told by the `.json` suffix)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        fmt = TOKENIZER_JSON if path.suffix == ".json" else SENTENCEPIECE
        try:
            return cls(path.read_bytes(), length, kind, fmt)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from e
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, length: int, model_type: str = "unigram") -> Tokenizer:
        """Train on `texts` (canonicalised first). The vocabulary may come out smaller than
        `vocab_size` when the texts cannot support it. Ids: pad 0, EOS 1, unk 2, as released."""
        corpus = [c for c in (canonicalize(t) for t in texts) if c]
        if not corpus:
            raise ValueError("cannot train a tokenizer: no non-empty captions")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=buf,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            model_type=model_type,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            num_threads=1,  # deterministic
            minloglevel=2,
        )
        return cls(buf.getvalue(), length)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Ids of one text, EOS last, not padded."""
        ids = self.sp.encode(clean(text, self.kind))[: self.length - 1]
        return ids + [self.eos_id]

    def __call__(self, texts: str | list[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.sp.decode([i for i in ids if i not in (self.eos_id, self.pad_id)])

    # SentencePieceProcessor does not pickle; DataLoader workers need copies.
    def __getstate__(self) -> dict:
        return {
            "proto": self.proto,
            "length": self.length,
            "kind": self.kind,
            "fmt": self.fmt,
            "specials": self.specials,
        }

    def __setstate__(self, state: dict) -> None:
        fmt, specials = state.get("fmt", SENTENCEPIECE), state.get("specials")
        self.__init__(state["proto"], state["length"], state.get("kind", "siglip"), fmt, specials)
