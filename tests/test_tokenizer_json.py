"""tokenizer.json-only folders (as transformers 5 saves SigLIP 2's Gemma tokenizer, and a SigLIP 1
Unigram one converted by transformers): read with Hugging Face `tokenizers`, the same ids as
transformers' tokenizer from the same folder (right padding, truncation keeping EOS, non-ASCII), the
same text embeddings as the SentencePiece path, kept inside saved model files and exported back."""

import json
import pickle
import shutil
import sys

import pytest
import torch

import siglip
from siglip.interop.siglip2 import tokenizer_kind
from siglip.interop.tensors import find_tokenizer
from siglip.tokenizer import TOKENIZER_JSON, Tokenizer, canonicalize
from siglip.tokenizer_json import sentencepiece_to_json
from tests.conftest import CAPTIONS
from tests.siglip2_helpers import gemma_proto
from tests.test_siglip2_interop import L, export, hf_siglip_gemma

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "A photo of a CAT!",
    "two  green   triangles",
    "Über das Café 2024 naïve",  # non-ASCII, digits, byte fallback
    "zebra xylophone qq ☃",  # pieces never seen, a character outside the vocabulary
    "a dog running on grass " * 4,  # truncated: EOS kept last
    "",
]


def gemma_bpe_folder(folder, length=L):
    """A Gemma-style BPE (byte fallback, spaces as ▁, ids pad 0 / eos 1 / bos 2 / unk 3) with a random
    tiny vocabulary trained here with `tokenizers`, saved by transformers 5's GemmaTokenizer: the
    folder gets tokenizer.json + tokenizer_config.json and no SentencePiece model."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    bpe = HFTok(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe.train_from_iterator(
        CAPTIONS * 4, trainers.BpeTrainer(vocab_size=380, special_tokens=specials, show_progress=False)
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = transformers.GemmaTokenizer(
        vocab=model["vocab"], merges=merges, add_bos_token=False, add_eos_token=True, model_max_length=length
    )
    tok.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir() if "tokenizer" in p.name) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    return folder


def ours_from(folder, length=L):
    tok = find_tokenizer(folder, None)
    assert tok.fmt == TOKENIZER_JSON
    return Tokenizer(tok.data, length, tokenizer_kind(folder, tok), tok.fmt, tok.specials)


def transformers_ids(folder, texts, length=L):
    hf = transformers.AutoTokenizer.from_pretrained(folder, padding_side="right")
    return hf(texts, padding="max_length", max_length=length, truncation=True).input_ids


def test_gemma_tokenizer_json_folder_gives_transformers_ids(tmp_path):
    folder = gemma_bpe_folder(tmp_path / "tok")
    ours = ours_from(folder)
    assert (ours.kind, ours.pad_id, ours.eos_id) == ("gemma", 0, 1)
    ids = ours(TEXTS)
    # transformers does not lowercase (GemmaTokenizer); big_vision does: the same ids on lowercase text
    assert ids.tolist() == transformers_ids(folder, [t.lower() for t in TEXTS])
    assert ids[4, -1] == 1 and (ids[4, :-1] > 3).all()  # truncated, EOS last, no BOS
    n = len(ours.encode(TEXTS[0]))
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all()  # EOS then <pad> on the right
    assert ids[5].tolist() == [1] + [0] * (L - 1)
    assert ours.encode("A Photo") == ours.encode("a photo")
    assert ours.decode(ours(["Über café"])[0]) == "über café"
    clone = pickle.loads(pickle.dumps(ours))
    assert clone.fmt == TOKENIZER_JSON and torch.equal(clone(TEXTS), ids)
    # saved again as transformers' Siglip2Tokenizer (a Lowercase normalizer in its tokenizer.json)
    s2 = transformers.Siglip2Tokenizer.from_pretrained(folder)
    s2.save_pretrained(tmp_path / "s2")
    assert torch.equal(ours_from(tmp_path / "s2")(TEXTS), ids)
    assert transformers_ids(tmp_path / "s2", TEXTS) == ids.tolist()


def test_gemma_tokenizer_json_embeds_as_the_sentencepiece_folder(tmp_path):
    """The same SigLIP 2 model with tokenizer.model (SentencePiece) and with only the tokenizer.json
    transformers 5 writes for it: the same ids and text embeddings; saved and loaded as our .pt."""
    hf_siglip_gemma(tmp_path / "spm")
    shutil.copytree(tmp_path / "spm", tmp_path / "json")
    (tmp_path / "json/tokenizer.model").unlink()
    (tmp_path / "json/tokenizer_config.json").unlink()
    transformers.AutoTokenizer.from_pretrained(tmp_path / "spm").save_pretrained(tmp_path / "json")
    assert not list((tmp_path / "json").glob("*.model"))
    a, b = siglip.load(tmp_path / "spm"), siglip.load(tmp_path / "json")
    assert (a.tokenizer.fmt, b.tokenizer.fmt) == ("sentencepiece", TOKENIZER_JSON)
    assert b.tokenizer.kind == "gemma" and torch.equal(a.tokenizer(TEXTS), b.tokenizer(TEXTS))
    torch.testing.assert_close(a.embed_texts(TEXTS), b.embed_texts(TEXTS), atol=0, rtol=0)
    # our model file keeps the tokenizer.json; --to hf writes it back for transformers
    export(tmp_path / "json", tmp_path / "export")
    assert (tmp_path / "export/tokenizer.json").is_file()
    assert transformers_ids(tmp_path / "export", [t.lower() for t in TEXTS]) == b.tokenizer(TEXTS).tolist()


def test_siglip1_unigram_tokenizer_json_folder(tmp_path, tokenizer):
    """SigLIP 1's Unigram vocabulary as transformers converts it (T5Tokenizer -> tokenizer.json):
    canonicalised text (punctuation deleted), EOS padding, the same ids as the SentencePiece model."""
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm/spiece.model").write_bytes(tokenizer.proto)
    hf = transformers.T5Tokenizer.from_pretrained(tmp_path / "spm", extra_ids=0, model_max_length=8)
    hf.save_pretrained(tmp_path / "json")
    (tmp_path / "json/spiece.model").unlink(missing_ok=True)
    assert (tmp_path / "json/tokenizer.json").is_file() and not list((tmp_path / "json").glob("*.model"))
    ours = ours_from(tmp_path / "json", tokenizer.length)
    assert ours.kind == "siglip" and ours.pad_id == ours.eos_id == tokenizer.eos_id
    texts = TEXTS + ["A Photo, of a DOG!!", "a cat"]
    assert torch.equal(ours(texts), tokenizer(texts))
    # transformers on the canonicalised text: the same ids up to EOS (it pads with <pad>, SigLIP with EOS)
    theirs = transformers_ids(tmp_path / "json", [canonicalize(t) for t in texts], tokenizer.length)
    for got, want in zip(ours(texts).tolist(), theirs):
        n = want.index(tokenizer.eos_id) + 1
        assert got[:n] == want[:n]


def test_siglip1_tokenizer_json_model_saves_and_exports(tmp_path, tokenizer, tiny_config):
    """A SigLIP 1 model whose tokenizer is a tokenizer.json: our model file keeps it, and --to hf
    writes it with a config transformers 5 reads (T5Tokenizer: SiglipTokenizer reads spiece.model only)."""
    from siglip.checkpoint import save_model
    from siglip.model import SigLIP

    (tmp_path / "spm").mkdir()
    (tmp_path / "spm/spiece.model").write_bytes(tokenizer.proto)
    transformers.T5Tokenizer.from_pretrained(tmp_path / "spm", extra_ids=0).save_pretrained(tmp_path / "json")
    json_tok = ours_from(tmp_path / "json", tokenizer.length)
    save_model(tmp_path / "m.pt", SigLIP(tiny_config), json_tok)
    model = siglip.load(tmp_path / "m.pt")
    assert model.tokenizer.fmt == TOKENIZER_JSON and torch.equal(model.tokenizer(TEXTS), tokenizer(TEXTS))
    export(tmp_path / "m.pt", tmp_path / "export")
    assert not list((tmp_path / "export").glob("*.model"))
    texts = [canonicalize(t) for t in TEXTS]
    for got, want in zip(tokenizer(texts).tolist(), transformers_ids(tmp_path / "export", texts, tokenizer.length)):
        n = want.index(tokenizer.eos_id) + 1
        assert got[:n] == want[:n]


def test_tokenizer_json_needs_the_extra(tmp_path, monkeypatch):
    folder = gemma_bpe_folder(tmp_path / "tok")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'siglip\[tokenizers\]'"):
        ours_from(folder)


def test_tokenizer_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a tokenizer\.json that Hugging Face tokenizers reads"):
        Tokenizer.from_file(bad, 8)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer found \(looked for spiece\.model, .*tokenizer\.json"):
        find_tokenizer((tmp_path / "empty").mkdir() or tmp_path / "empty", None)


@pytest.mark.parametrize("kind", ["gemma", "siglip"])
def test_sentencepiece_converts_to_tokenizer_json_with_the_same_ids(kind, tokenizer):
    """What `--to hf` writes beside spiece.model / tokenizer.model: Gemma's BPE (merges ranked by
    piece score, byte fallback) and SigLIP 1's Unigram (the model's own normalizer) give the same ids."""
    proto = gemma_proto() if kind == "gemma" else tokenizer.proto
    spm_tok = Tokenizer(proto, L, kind)
    json_tok = Tokenizer(sentencepiece_to_json(proto, kind), L, kind, TOKENIZER_JSON)
    texts = TEXTS + [" leading space", "Two green triangles!", "handwritten number seven 12345"]
    assert torch.equal(json_tok(texts), spm_tok(texts))
    # decoding agrees too, but for unknown pieces (spm writes " ⁇ ", tokenizers "<unk>")
    assert [json_tok.decode(i) for i in json_tok(texts[:2])] == [spm_tok.decode(i) for i in spm_tok(texts[:2])]


def test_export_writes_tokenizer_json_beside_the_sentencepiece_model(tmp_path):
    """`--to hf` of a SigLIP 2 model read with tokenizer.model: both files; the tokenizer.json alone
    (as transformers 5 would save the folder again) gives the same ids in siglip and transformers."""
    hf_siglip_gemma(tmp_path / "spm")
    export(tmp_path / "spm", tmp_path / "export")
    assert (tmp_path / "export/tokenizer.model").is_file() and (tmp_path / "export/tokenizer.json").is_file()
    (tmp_path / "export/tokenizer.model").unlink()
    a, b = siglip.load(tmp_path / "spm"), siglip.load(tmp_path / "export")
    assert b.tokenizer.fmt == TOKENIZER_JSON and torch.equal(a.tokenizer(TEXTS), b.tokenizer(TEXTS))
    assert transformers_ids(tmp_path / "export", [t.lower() for t in TEXTS]) == a.tokenizer(TEXTS).tolist()
