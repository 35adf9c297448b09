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

`sentencepiece_to_json` goes the other way: a SentencePiece model (Unigram, or BPE with byte
fallback) as a tokenizer.json giving the same ids, which `--to hf` writes beside it.

`tokenizers` is an optional dependency (`pip install 'siglip[tokenizers]'`; transformers installs it
too): it comes with the Hugging Face Hub client, which the offline core does not need.
"""

from __future__ import annotations

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


# --------------------------------------------------------------------------------------------------
# A SentencePiece model as tokenizer.json (what `--to hf` writes beside spiece.model / tokenizer.model)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        out |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return out, i


def _proto_fields(buf: bytes) -> dict[int, Any]:
    """The last value of each field of one protobuf message (wire format; enough for the few
    scalar and bytes fields of SentencePiece's ModelProto read here)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            val, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"SentencePiece model: protobuf wire type {wire} not expected")
        out[key >> 3] = val
    return out


def sentencepiece_to_json(proto: bytes, kind: str) -> bytes:
    """tokenizer.json for the SentencePiece model `proto` (a Unigram like SigLIP 1's, or a BPE with
    byte fallback like Gemma's), giving the same ids for the same text, with EOS appended by its
    post-processor as transformers expects. Needs `tokenizers`."""
    import sentencepiece as spm

    tk = _tokenizers()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    fields = _proto_fields(proto)  # ModelProto: 2 trainer_spec, 3 normalizer_spec
    trainer, norm = _proto_fields(fields.get(2, b"")), _proto_fields(fields.get(3, b""))
    model_type, byte_fallback = trainer.get(3, 1), bool(trainer.get(35, 0))  # 1 unigram, 2 bpe
    dummy_prefix, squash_spaces = bool(norm.get(3, 1)), bool(norm.get(4, 1))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    unk = sp.unk_id()
    if model_type == 1:
        model = tk.models.Unigram([(p, sp.get_score(i)) for i, p in enumerate(pieces)], unk, byte_fallback)
    elif model_type == 2:
        model = tk.models.BPE(
            {p: i for i, p in enumerate(pieces)}, _bpe_merges(sp, pieces), unk_token=pieces[unk],
            fuse_unk=True, byte_fallback=byte_fallback,
        )  # fmt: skip
    else:
        raise ValueError(f"SentencePiece model type {model_type}: only unigram (1) and bpe (2) convert")
    tok = tk.Tokenizer(model)
    steps = [tk.normalizers.Precompiled(norm[2])] if norm.get(2) else []
    if squash_spaces:
        steps.append(tk.normalizers.Replace(tk.Regex(" {2,}"), " "))
    tok.normalizer = tk.normalizers.Sequence(steps) if steps else None
    scheme = "always" if dummy_prefix else "never"
    tok.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=model_type == 1)
    tok.decoder = tk.decoders.Sequence(
        [tk.decoders.Metaspace(replacement="▁", prepend_scheme=scheme), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
    )
    specials = [i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([tk.AddedToken(pieces[i], special=True, normalized=False) for i in specials])
    eos = pieces[sp.eos_id()]
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, sp.eos_id())]
    )
    return tok.to_str(pretty=True).encode()


def _bpe_merges(sp: Any, pieces: list[str]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges in the order it applies them: a piece's score ranks its merge (higher
    first); each piece comes from every split into two pieces of the vocabulary."""
    ids = {p: i for i, p in enumerate(pieces)}
    found = []
    for i, piece in enumerate(pieces):
        if not sp.is_unused(i) and not sp.is_control(i) and not sp.is_byte(i) and not sp.is_unknown(i):
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in ids and right in ids:
                    found.append((-sp.get_score(i), ids[left], ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(found)]
