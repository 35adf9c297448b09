"""SentencePiece tokenizer: canonicalisation, EOS, fixed-length EOS padding, truncation."""

import pickle

import pytest

from siglip.tokenizer import Tokenizer, canonicalize


def test_canonicalize():
    assert canonicalize("  A Photo, of a DOG!!\n\t(cute)  ") == "a photo of a dog cute"
    assert canonicalize("it's   a—dash") == "its a—dash"  # only ASCII punctuation is deleted


def test_fixed_length_eos_padding(tokenizer):
    ids = tokenizer(["a cat", "A CAT!", "a dog running on grass " * 5])
    assert ids.shape == (3, 8) and ids.dtype.is_floating_point is False
    eos = tokenizer.eos_id
    assert eos == 1
    assert ids[0].tolist() == ids[1].tolist()  # canonicalised before encoding
    n = len(tokenizer.encode("a cat"))
    assert ids[0, n - 1] == eos and (ids[0, n:] == eos).all()  # padded with EOS, no separate pad id
    assert ids[2, -1] == eos and (ids[2, :-1] != eos).all()  # truncated, EOS kept last
    assert eos not in tokenizer.encode("a cat")[:-1]


def test_no_bos_and_decode(tokenizer):
    assert tokenizer.sp.bos_id() == -1  # no BOS piece at all
    assert tokenizer.decode(tokenizer(["A dog!"])[0]) == "a dog"


def test_pickles_for_dataloader_workers(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone(["two green triangles"]).tolist() == tokenizer(["two green triangles"]).tolist()


def test_bad_model_file(tmp_path):
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="spiece.model is not a SentencePiece model"):
        Tokenizer.from_file(bad, 8)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.from_file(tmp_path / "missing.model", 8)


def test_train_refuses_empty_corpus():
    with pytest.raises(ValueError, match="no non-empty captions"):
        Tokenizer.train(["!!!", "  "], vocab_size=16, length=4)
