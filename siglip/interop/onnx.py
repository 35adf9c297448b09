"""Our model out as ONNX, for onnxruntime anywhere (servers, phones, browsers): a folder with

    image.onnx          fixed resolution: pixels (n, 3, S, S) float32 in [-1, 1] -> embeddings (n, d);
                        NaFlex: patches (n, P, p*p*3), mask (n, P) bool, spatial_shapes (n, 2) int64
    text.onnx           ids (n, L) int64 -> embeddings (n, d)
    siglip_onnx.json    what a caller must do around them: image size, resize filter, mean/std, text
                        length, pad id, canonicalisation, t and b (SPEC: logit = t * cos + b)
    tokenizer files     the SentencePiece model (or tokenizer.json) and Hugging Face's configs

Both graphs return L2-normalised float32 rows and take any batch size. `--quantize int8` applies
onnxruntime's dynamic quantization to the matrix products with a constant weight (activations
quantized per call; attention's activation products stay float); `--fp16` stores and computes the
towers in float16 (for GPUs; inputs and outputs stay float32). `siglip.load` runs such a folder
(`siglip.onnx_model`). onnx, onnxscript (the exporter) and onnxruntime come with `pip install siglip[onnx]`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from siglip.checkpoint import Payload, tokenizer_from_payload
from siglip.config import model_config_from_dict
from siglip.model import SigLIP, l2_normalize
from siglip.tokenizer import TOKENIZER_JSON, Tokenizer

SPEC_FILE = "siglip_onnx.json"
FORMAT = "siglip-onnx"
EXTRA = "pip install 'siglip[onnx]'"
CANONICAL = {
    "siglip": "lowercase; ASCII punctuation deleted; whitespace collapsed and stripped (big_vision's)",
    "gemma": "lowercase only (SigLIP 2's Gemma tokenizer)",
}


def require(module: str):
    """Import an optional dependency of the export, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ONNX export and runtime need {module}: {EXTRA}") from e


def naflex_positions(pos: Tensor, grid: int, spatial_shapes: Tensor, length: int) -> Tensor:
    """`siglip.naflex.resize_positions` written as one weighted sum over the grid, with no Python
    loop over shapes, so that an exported graph takes any spatial shapes: (grid*grid, d) learned
    positions, (n, 2) (h, w) -> (n, length, d), zeros past each image's h*w. The weights are those
    of F.interpolate(mode="bilinear", align_corners=False, antialias=True) along each axis."""
    hw = spatial_shapes.to(torch.float32)  # (n, 2)
    p = torch.arange(length, device=pos.device, dtype=torch.float32)[None, :]  # (1, length)
    w = hw[:, 1:2]
    row = torch.floor(p / w)  # (n, length): each token's row and column in its image
    valid = p < hw.prod(-1, keepdim=True)  # (n, length): the image's own tokens, then padding
    coords = torch.stack([row, p - row * w], dim=-1) * valid[..., None]  # (n, length, 2); padding at (0, 0)
    scale = grid / hw[:, None, :]  # (n, 1, 2): grid cells per output cell, per axis
    center = (coords + 0.5) * scale - 0.5  # the output cell's center in grid coordinates
    source = torch.arange(grid, device=pos.device, dtype=torch.float32)  # (grid,)
    tent = 1 - (source - center[..., None]).abs() / scale.clamp(min=1)[..., None]  # (n, length, 2, grid)
    tent = tent.clamp(min=0)
    tent = tent / tent.sum(-1, keepdim=True)
    weights = (tent[..., 0, :, None] * tent[..., 1, None, :]).flatten(-2)  # (n, length, grid*grid)
    return (weights * valid[..., None]) @ pos.float()


class ImageGraph(nn.Module):
    """pixels (n, 3, S, S) -> unit embeddings (n, d), computed in `dtype`, returned as float32."""

    def __init__(self, model: SigLIP, dtype: torch.dtype):
        super().__init__()
        self.tower, self.dtype = model.image, dtype

    def forward(self, pixels: Tensor) -> Tensor:
        return l2_normalize(self.tower(pixels.to(self.dtype)).float())


class NaFlexImageGraph(nn.Module):
    """patches (n, P, p*p*3), mask (n, P) bool, spatial_shapes (n, 2) int64 -> unit embeddings (n, d)."""

    def __init__(self, model: SigLIP, dtype: torch.dtype):
        super().__init__()
        self.tower, self.dtype = model.image, dtype

    def forward(self, patches: Tensor, mask: Tensor, spatial_shapes: Tensor) -> Tensor:
        t = self.tower
        pos = naflex_positions(t.pos_embed[0], t.grid, spatial_shapes, patches.shape[1]).to(self.dtype)
        x = t.patch_embed(patches.to(self.dtype)) + pos
        return l2_normalize(t.head(t.encoder(x, mask), mask).float())


class TextGraph(nn.Module):
    """ids (n, L) int64 -> unit embeddings (n, d)."""

    def __init__(self, model: SigLIP):
        super().__init__()
        self.tower = model.text

    def forward(self, ids: Tensor) -> Tensor:
        return l2_normalize(self.tower(ids).float())


def example_inputs(model: SigLIP) -> dict[str, Tensor]:
    """Inputs of batch 2 for tracing each graph (the batch, and NaFlex's P, stay dynamic)."""
    c = model.config
    if c.naflex:
        n = (c.image_size // c.patch_size) ** 2
        shapes = torch.tensor([[c.image_size // c.patch_size] * 2, [1, 2]])
        mask = torch.arange(n)[None, :] < shapes.prod(-1, keepdim=True)
        image = {"patches": torch.zeros(2, n, 3 * c.patch_size**2), "mask": mask, "spatial_shapes": shapes}
    else:
        image = {"pixels": torch.zeros(2, 3, c.image_size, c.image_size)}
    return {**image, "ids": torch.zeros(2, c.text_length, dtype=torch.long)}


def export_graph(module: nn.Module, inputs: dict[str, Tensor], path: Path, dynamic: dict[str, dict]) -> None:
    """torch.onnx's exporter (torch.export underneath), batch (and NaFlex's P) dynamic, weights inside
    the .onnx file unless they pass protobuf's 2 GB."""
    require("onnxscript")
    for name in ("onnx_ir", "onnxscript"):  # their graph passes log every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    torch.onnx.export(
        module.eval(),
        tuple(inputs.values()),
        str(path),
        input_names=list(inputs),
        output_names=["embeddings"],
        dynamic_shapes=tuple(dynamic[k] for k in inputs),
        dynamo=True,
        external_data=size > 1.8e9,
        verbose=False,
    )


def quantize_int8(path: Path) -> None:
    """Replace `path` by onnxruntime's dynamic int8 quantization of it: weights of the MatMuls with a
    constant B stored int8 (per output channel) in 7 bits (`reduce_range`), activations quantized per
    call. 7 bits because a CPU without VNNI (AVX2, AVX-512 before Cascade Lake) adds u8 x s8 products
    in pairs into int16, which saturates with 8-bit weights: on such a CPU the demo lost 1.67 points
    of zero-shot acc1 with 8 bits and none with 7 (docs/onnx.md)."""
    quant = require("onnxruntime.quantization")
    tmp = path.with_name(path.stem + ".fp32.onnx")
    path.rename(tmp)
    logging.disable(logging.WARNING)  # the quantizer logs each skipped node, and advice we do not take, to root
    try:
        int8 = quant.QuantType.QInt8
        quant.quantize_dynamic(
            tmp, path, weight_type=int8, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True
        )
    finally:
        logging.disable(logging.NOTSET)
    tmp.unlink()
    for extra in tmp.parent.glob(tmp.name + ".data"):
        extra.unlink()


def tokenizer_spec(tok: Tokenizer, dst: Path) -> dict:
    """Write the tokenizer beside the graphs (ours, plus Hugging Face's configs) and describe it."""
    from siglip.interop.hf import hf_tokenizer_files

    for name, data in hf_tokenizer_files(tok).items():
        (dst / name).write_bytes(data)
    ours = (
        "tokenizer.json"
        if tok.fmt == TOKENIZER_JSON
        else ("tokenizer.model" if tok.kind == "gemma" else "spiece.model")
    )
    (dst / ours).write_bytes(tok.proto)
    return {
        "file": ours,
        "format": tok.fmt,
        "kind": tok.kind,
        "specials": tok.specials,
        "length": tok.length,
        "pad_id": tok.pad_id,
        "eos_id": tok.eos_id,
        "canonicalisation": CANONICAL[tok.kind],
        "padding": "EOS appended, then pad_id to exactly `length` ids (no attention mask: pad tokens are seen)",
    }


def image_spec(cfg, preprocess: dict) -> dict:
    """The image preprocessing a caller reproduces, and the graph's inputs."""
    common = {"resample": preprocess["resample"], "rescale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    if cfg.naflex:
        return {
            "kind": "naflex",
            "patch_size": cfg.patch_size,
            "max_num_patches": int(preprocess["max_num_patches"]),
            "inputs": {
                "patches": "(n, P, p*p*3) float32, row-major patches each flattened (row, column, channel)",
                "mask": "(n, P) bool, True for the h*w real patches (first)",
                "spatial_shapes": "(n, 2) int64, (h, w) patches",
            },  # fmt: skip
            "resize": "aspect ratio kept, to the largest (h, w) patch grid with h*w <= max_num_patches",
            **common,
        }
    size = int(preprocess["image_size"])
    inputs = {"pixels": "(n, 3, S, S) float32 in [-1, 1], RGB"}
    return {"kind": "fixed", "size": size, "resize": "the whole image to S x S (no crop)", "inputs": inputs, **common}


def to_onnx(payload: Payload, dst: str | Path, quantize: str = "", fp16: bool = False, fingerprint: str = "") -> dict:
    """Export `payload` (both towers) to the folder `dst`; returns the spec written as siglip_onnx.json."""
    if payload.get("partial"):
        raise ValueError(f"a standalone {payload['partial']} tower: the ONNX export needs both towers")
    if quantize not in ("", "int8"):
        raise ValueError(f"--quantize {quantize!r}: only int8")
    if quantize and fp16:
        raise ValueError("--quantize int8 and --fp16 are two different exports: choose one")
    cfg = model_config_from_dict(payload["model_config"])
    with torch.device("meta"):
        model = SigLIP(cfg)
    model.load_state_dict(payload["state_dict"], assign=True)
    dtype = torch.float16 if fp16 else torch.float32
    model = model.to(dtype).eval()
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(model)
    batch = torch.export.Dim("batch")
    dyn = {"pixels": {0: batch}, "ids": {0: batch}, "patches": {0: batch, 1: torch.export.Dim("patches")}}
    dyn.update(mask={0: batch, 1: dyn["patches"][1]}, spatial_shapes={0: batch})
    image = NaFlexImageGraph(model, dtype) if cfg.naflex else ImageGraph(model, dtype)
    image_inputs = {k: v for k, v in inputs.items() if k != "ids"}
    with torch.no_grad():
        export_graph(image, image_inputs, dst / "image.onnx", dyn)
        export_graph(TextGraph(model), {"ids": inputs["ids"]}, dst / "text.onnx", dyn)
    if quantize:
        quantize_int8(dst / "image.onnx")
        quantize_int8(dst / "text.onnx")
    spec = {
        "format": FORMAT,
        "version": 1,
        "precision": quantize or ("fp16" if fp16 else "fp32"),
        "image_model": "image.onnx",
        "text_model": "text.onnx",
        "embed_dim": cfg.out_dim,
        "image": image_spec(cfg, payload["preprocess"]),
        "text": tokenizer_spec(tokenizer_from_payload(payload), dst),
        "t": float(payload["state_dict"]["t_prime"].float().exp()),
        "b": float(payload["state_dict"]["b"].float()),
        "logit": "t * cos(image, text) + b; the pair's probability is sigmoid(logit)",
        "source_fingerprint": fingerprint,
        "model_config": payload["model_config"],
        "preprocess": payload["preprocess"],
    }
    (dst / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return spec
