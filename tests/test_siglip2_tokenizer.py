"""SigLIP 2's Gemma-kind tokenizer: the same ids as transformers' GemmaTokenizer / Siglip2Tokenizer
and open_clip's SigLIP 2 text pipeline for the same tokenizer folder."""

import pickle

import pytest
import torch

from siglip.tokenizer import Tokenizer
from tests.siglip2_helpers import gemma_proto, write_gemma_tokenizer

L = 16
TEXTS = [
    "A photo of a CAT!",
    "two  green   triangles",  # runs of spaces are kept by the Gemma vocabulary
    "Über das Café 2024",  # digits split, non-ASCII, byte fallback
    "zebra xylophone qq",  # pieces not in the training captions
    "a dog running on grass " * 3,  # truncated: EOS kept last
    "",
]


def test_gemma_conventions():
    tok = Tokenizer(gemma_proto(), L, kind="gemma")
    ids = tok(TEXTS)
    assert ids.shape == (len(TEXTS), L) and tok.pad_id == 0 and tok.eos_id == 1
    n = len(tok.encode(TEXTS[0]))
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all()  # EOS then <pad> on the right
    assert (ids != 2).all()  # no BOS
    assert ids[4, -1] == 1 and (ids[4, :-1] > 1).all()  # truncated, EOS last
    assert ids[5].tolist() == [1] + [0] * (L - 1)
    assert tok.encode("A Photo") == tok.encode("a photo")  # lowercased, punctuation kept
    assert tok.encode("a cat!") != tok.encode("a cat")
    assert tok.decode(ids[0]) == "a photo of a cat!"
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.kind == "gemma" and torch.equal(clone(TEXTS), ids)


def test_gemma_ids_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = write_gemma_tokenizer(tmp_path / "tok", L)
    ours = Tokenizer(gemma_proto(), L, kind="gemma")(TEXTS).tolist()
    # the released folders say GemmaTokenizer, which does not lowercase: users lowercase themselves
    gemma = transformers.AutoTokenizer.from_pretrained(folder, padding_side="right")
    assert type(gemma).__name__ == "GemmaTokenizer"
    enc = gemma([t.lower() for t in TEXTS], padding="max_length", max_length=L, truncation=True)
    assert enc.input_ids == ours
    # transformers' Siglip2Tokenizer lowercases in its normalizer
    gemma.save_pretrained(tmp_path / "fast")
    s2 = transformers.Siglip2Tokenizer.from_pretrained(tmp_path / "fast", padding_side="right")
    assert s2(TEXTS, padding="max_length", max_length=L, truncation=True).input_ids == ours
    # without padding_side transformers pads on the LEFT, which moves the pooled last position
    left = transformers.AutoTokenizer.from_pretrained(folder)
    assert left(["a cat"], padding="max_length", max_length=L).input_ids[0][0] == 0


def test_gemma_ids_match_open_clip(tmp_path):
    open_clip_tok = pytest.importorskip("open_clip.tokenizer")
    folder = write_gemma_tokenizer(tmp_path / "tok", L, padding_side="right")
    # open_clip's SigLIP 2 configs clean with "canonicalize" (also deletes punctuation): same ids on
    # texts without punctuation
    oc = open_clip_tok.HFTokenizer(str(folder), context_length=L, clean="canonicalize")
    texts = [t for t in TEXTS if t.replace(" ", "").isalnum()]
    assert len(texts) >= 3
    ours = Tokenizer(gemma_proto(), L, kind="gemma")
    assert oc(texts).tolist() == ours([" ".join(t.split()) for t in texts]).tolist()


def test_unknown_kind(tokenizer):
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer(tokenizer.proto, 8, kind="t5")
