"""Use a model from Python: `siglip.load(path)` returns a `Model` that embeds, scores and classifies.

    model = siglip.load("runs/demo/siglip_demo.pt")              # any format siglip reads; eval mode, CPU
    model = siglip.load("google/siglip-base-patch16-224")        # a Hub id: the cache, else a download
    zimg = model.embed_images(["seven.png", pil_image])          # (2, d) float32 unit rows, on the CPU
    ztxt = model.embed_texts(["a handwritten seven"])            # (1, d)
    p = model.score(["seven.png"], ["a handwritten seven", "a handwritten one"])  # (1, 2) sigmoid(t*cos+b)
    probs = model.classify(images, ["cat", "dog"], templates=["a photo of a {}."])  # (n, 2)

Scores are the paper's per-pair probabilities `sigmoid(t * cos + b)`: each pair on its own, so a row
need not sum to 1 (several labels can be likely at once, or none). Weights that come without a
tokenizer (an open_clip `.bin` alone, a big_vision `.npz`, a Hugging Face folder without
`spiece.model`) load; the image side works and a text call says how to pass one.

Images reach the image tower in two steps: `preprocess` (the checkpoint's own, built by
`siglip.transforms.checkpoint_transform`: one image -> its model input), stacked by `prepare`, and
`encode_prepared` (model inputs -> unit fp32 rows), the one call into the image tower. `embed_images`,
`score`, `classify` and the `siglip` command (whose DataLoader workers apply `preprocess`) all use them.
`encode_image` / `encode_text` (the module's signatures, for code written against `SigLIP`) run the
same packed towers (`siglip.inference`) where no gradient can be asked for, so every embedding method
runs at one speed; where one can (grad mode on and a weight or input that requires grad, in eval mode
too) they run the module, so gradients flow as through `model.model`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from siglip import inference
from siglip.checkpoint import tokenizer_from_payload
from siglip.config import model_config_from_dict
from siglip.data import load_image
from siglip.interop.detect import load_payload
from siglip.model import SigLIP, empty_model, l2_normalize
from siglip.naflex import NaFlexPatches, stack_images
from siglip.onnx_model import OnnxTowers, is_onnx_export
from siglip.resolution import at_image_size
from siglip.tokenizer import Tokenizer
from siglip.transforms import checkpoint_transform

ImageLike = Image.Image | str | os.PathLike
# a Tensor: already preprocessed, (3, S, S) or (n, 3, S, S); NaFlexPatches: a NaFlex model's, one or a batch
Images = ImageLike | Sequence[ImageLike] | Tensor | NaFlexPatches
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class ImageFeatures(NamedTuple):
    """What `Model.image_features` returns. `tokens`: (n, P, width) patch tokens, or (n, width) with
    `pooled=True`; `mask`: (n, P) bool, True for each image's real patches (all True at a fixed
    resolution; a NaFlex batch's padding tokens are False, and their values mean nothing)."""

    tokens: Tensor
    mask: Tensor


class TokenizerMissing(RuntimeError):
    """A text call on a model loaded without a tokenizer."""


def weights_fingerprint(state_dict: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the same weights give
    the same fingerprint whatever file format they were read from (16 hex digits are kept)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:16]


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


class Model:
    """A SigLIP model ready to use: `model` (the `SigLIP` module, eval mode), `preprocess` (PIL image
    -> (3, S, S) in [-1, 1]), `tokenizer` (list of str -> (n, L) ids), `path`, `fingerprint`.
    `encode_image` / `encode_text` take the module's arguments and return its outputs and gradients
    (the packed towers of `embed_images` run only where autograd cannot need them). Other attributes
    (`t`, `b`, `config`, `parameters`, ...) are the `SigLIP` module's, so code written for it keeps
    working; to train, use the module itself, `model.model`."""

    def __init__(
        self,
        model: SigLIP,
        preprocess: Callable[[Image.Image], Tensor | NaFlexPatches],
        tokenizer: Tokenizer | None,
        path: str = "",
        fingerprint: str = "",
    ):
        self.model, self.preprocess, self._tokenizer = model, preprocess, tokenizer
        self.path, self.fingerprint = path, fingerprint

    def __getattr__(self, name: str):
        if name in ("model", "_tokenizer"):  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def to(self, *args, **kwargs) -> Model:
        """Move or cast the weights (as `nn.Module.to`); returns this Model, so chaining keeps its methods."""
        self.model.to(*args, **kwargs)
        return self

    def cuda(self, device: int | None = None) -> Model:
        return self.to(torch.device("cuda", device) if device is not None else "cuda")

    def cpu(self) -> Model:
        return self.to("cpu")

    def __call__(self, pixels: Tensor | NaFlexPatches, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(zimg, ztxt) as `SigLIP.forward`: `encode_image(pixels)`, `encode_text(ids)`."""
        return self.encode_image(pixels), self.encode_text(ids)

    def encode_image(
        self, pixels: Tensor | NaFlexPatches, mask: Tensor | None = None, spatial_shapes: Tensor | None = None
    ) -> Tensor:
        """`SigLIP.encode_image`: (n, 3, S, S) pixels in [-1, 1] (or NaFlex patches, mask, shapes) ->
        (n, d) unit rows in the model's dtype and on its device, as the module returns them (to 1e-6
        in fp32). Where autograd cannot need the result (under `torch.no_grad()` / `inference_mode()`,
        or nothing requires grad) it runs the packed image tower (`embed_images`'s path); elsewhere the
        module, with gradients, whatever its mode (`siglip.inference.run_tower`)."""
        return inference.encode_image(self.model, pixels, mask, spatial_shapes)

    def encode_text(self, ids: Tensor) -> Tensor:
        """`SigLIP.encode_text`: (n, L) token ids -> (n, d) unit rows, as the module returns them (to
        1e-6 in fp32); the packed text tower or the module, as `encode_image` chooses."""
        return inference.encode_text(self.model, ids)

    def __repr__(self) -> str:
        c = self.model.config
        return f"Model({self.path!r}, {c.variant}, {c.image_size}px, dim {c.out_dim}, {self.device}, {self.dtype})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        return self.model.config.out_dim

    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise TokenizerMissing(
                f"{self.path or 'this model'}: loaded without a tokenizer (none beside the weights: looked for "
                "spiece.model, tokenizer.model or a single *.model), so it can embed images but not text. Pass "
                "its tokenizer: siglip.load(path, tokenizer='spiece.model'), a folder or a Hub id such as "
                "tokenizer='google/siglip-base-patch16-224', or --tokenizer on the siglip command line"
            )
        return self._tokenizer

    # ---------------------------------------------------------------------------------------------
    # images: the only two places that know what the image tower takes

    def prepare(self, images: Sequence[Image.Image | str | os.PathLike]) -> Tensor | NaFlexPatches:
        """Images (PIL or paths) -> the image tower's input, (n, 3, S, S) float32 in [-1, 1] (a NaFlex
        model: a `NaFlexPatches` batch). An unreadable file is an error naming it (the `siglip embed`
        command skips and lists them)."""
        out = []
        for img in images:
            if not isinstance(img, Image.Image):
                try:
                    img = load_image(str(img))
                except Exception as e:  # noqa: BLE001 - any decode failure, with the file named
                    raise ValueError(f"cannot read image {img}: {e}") from e
            out.append(self.preprocess(img))
        return stack_images(out)

    @torch.inference_mode()
    def encode_prepared(self, inputs: Tensor | NaFlexPatches) -> Tensor:
        """`prepare`'s output (n, 3, S, S) or NaFlex patches -> (n, d) float32 unit rows on the model's device."""
        z = inference.encode_image(self.model, inputs.to(self.device, self.dtype, non_blocking=True))
        return l2_normalize(z.float())

    def _image_inputs(self, images: Images) -> Tensor | NaFlexPatches:
        """Any `Images` -> one batch of model inputs on the model's device and in its dtype."""
        if isinstance(images, NaFlexPatches) and images.patches.dim() == 2:  # one preprocessed NaFlex image
            images = NaFlexPatches.stack([images])
        elif isinstance(images, Tensor) and images.dim() == 3:
            images = images[None]
        elif isinstance(images, (Image.Image, str, os.PathLike)):
            images = self.prepare([images])
        elif not isinstance(images, (Tensor, NaFlexPatches)):
            images = self.prepare(images)
        return images.to(self.device, self.dtype)

    def image_features(
        self, images: Images, layer: int = -1, pooled: bool = False, post_norm: bool = False
    ) -> ImageFeatures:
        """The image tower's features, for a VLM or a dense task: `(tokens, mask)` (`ImageFeatures`).

        `layer` counts as transformers' `hidden_states` do: 0 is the patch embeddings plus positions,
        k the output of block k, -1 the last block's output BEFORE the final LayerNorm, -2 the one
        before it (LLaVA's `vision_feature_layer=-2`). `post_norm=True` (layer -1 only) applies the
        final LayerNorm: transformers' `last_hidden_state`. `pooled=True` (layer -1 only) gives the
        MAP head's (n, width) vector (transformers' `pooler_output`; SigLIP has no image projection,
        so this is the image embedding before L2 normalisation). `images`: as `embed_images` takes
        them, as one batch. Runs the module itself, with autograd where the caller has it on."""
        tower = self.model.image
        depth = len(tower.encoder.blocks)
        if not -(depth + 1) <= layer <= depth:
            raise ValueError(
                f"layer {layer} out of range: the image tower has {depth} blocks (layers -{depth + 1}..{depth})"
            )
        index = layer % (depth + 1)
        if (pooled or post_norm) and index != depth:
            raise ValueError(
                f"pooled / post_norm take the last block's output (layer -1 or {depth}), not layer {layer}"
            )
        inputs = self._image_inputs(images)
        pixels, mask, shapes = inputs if isinstance(inputs, NaFlexPatches) else (inputs, None, None)
        keep = None if mask is None else mask.bool()
        x = tower.embed(pixels, keep, shapes)  # (n, P, width)
        h = tower.encoder.hidden_states(x, keep, upto=index)[-1]
        if pooled or post_norm:
            h = tower.encoder.norm(h)
        if pooled:
            h = tower.head(h, keep)
        return ImageFeatures(
            h, keep if keep is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        )

    # ---------------------------------------------------------------------------------------------

    def embed_images(self, images: Images, batch_size: int = 64, progress: bool = False) -> Tensor:
        """(n, d) float32 unit rows on the CPU. `images`: PIL images, file paths, or a preprocessed
        tensor (3, S, S) / (n, 3, S, S); one image (not in a list) gives (1, d). Batches of
        `batch_size` go through the model under inference mode."""
        if isinstance(images, NaFlexPatches) and images.patches.dim() == 2:  # one preprocessed NaFlex image
            images = NaFlexPatches.stack([images])
        if isinstance(images, (Tensor, NaFlexPatches)):
            batch = images[None] if isinstance(images, Tensor) and images.dim() == 3 else images
            parts = [batch[s : s + batch_size] for s in range(0, len(batch), batch_size)]
            return torch.cat([self.encode_prepared(p).cpu() for p in parts] or [torch.zeros(0, self.dim)])
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        out = []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc="images", unit="batch", disable=not progress, leave=False):
            out.append(self.encode_prepared(self.prepare(images[s : s + batch_size])).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256, progress: bool = False) -> Tensor:
        """(n, d) float32 unit rows on the CPU; one string gives (1, d)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        tok, out = self.tokenizer, []
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="texts", unit="batch", disable=not progress, leave=False):
            ids = tok(texts[s : s + batch_size]).to(self.device)
            out.append(l2_normalize(inference.encode_text(self.model, ids).float()).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def from_cosine(self, cos: Tensor) -> Tensor:
        """Logits `t * cos + b` (float32, on the CPU) for cosines of any shape."""
        return self.model.t.float().cpu() * cos.float().cpu() + self.model.b.float().cpu()

    def logits(self, zimg: Tensor, ztxt: Tensor) -> Tensor:
        """(n_img, n_txt) float32 `t * zimg @ ztxt.T + b` from unit embeddings."""
        return self.from_cosine(zimg.float().cpu() @ ztxt.float().cpu().T)

    def score(self, images: Images, texts: str | Sequence[str], pairs: bool = False) -> Tensor:
        """Sigmoid probabilities `sigmoid(t * cos + b)`: (n_img, n_txt) for every image with every
        text, or with `pairs=True` (n,) for image i with text i (equal lengths)."""
        zimg, ztxt = self.embed_images(images), self.embed_texts(texts)
        if not pairs:
            return torch.sigmoid(self.logits(zimg, ztxt))
        if len(zimg) != len(ztxt):
            raise ValueError(f"pairs=True needs as many images as texts, got {len(zimg)} and {len(ztxt)}")
        return torch.sigmoid(self.from_cosine((zimg * ztxt).sum(-1)))

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        """(c, d) unit rows: per label, the renormalised mean of its template embeddings (each
        template has one `{}`), as zero-shot classification builds its classifier."""
        templates = list(templates) or ["{}"]
        for t in templates:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' where the label goes")
        z = self.embed_texts([t.format(label) for label in labels for t in templates])  # label-major
        return l2_normalize(z.view(len(labels), len(templates), -1).mean(dim=1))

    def classify(self, images: Images, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        """(n, c) per-label probabilities `sigmoid(t * cos(image, label) + b)`; the top label of
        image i is `probs[i].argmax()` (the zero-shot prediction)."""
        return torch.sigmoid(self.logits(self.embed_images(images), self.label_embeddings(labels, templates)))


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    image_size: int = 0,
) -> Model:
    """A `Model` in eval mode on `device` ("auto": CUDA when there is one), weights in `dtype`
    (None: as stored; "float16" / "bfloat16" for speed on a GPU). `path`: our model file, a Hugging
    Face SigLIP folder or weights file, an open_clip SigLIP checkpoint or a big_vision .npz (detected
    from the content), or a Hub id of one (`google/siglip-base-patch16-224`, `org/name@revision`,
    `hf-hub:timm/ViT-B-16-SigLIP`: the cache first, else a download; `siglip.interop.hub`), or a
    folder of `siglip convert --to onnx` (run by onnxruntime); `tokenizer`: a SentencePiece model or
    tokenizer.json, a folder holding one or a Hub id (its tokenizer files alone), for weights without
    one beside them. `image_size`: run a fixed-resolution model at this size (a multiple of the
    patch): its position grid resized as transformers' `interpolate_pos_encoding` does
    (`siglip.resolution`); the model's config and preprocessing then say the new size, and so does a
    model saved from it."""
    if is_onnx_export(path):  # a folder of `siglip convert --to onnx`: onnxruntime runs it
        if image_size or tokenizer or dtype:
            raise ValueError(
                f"{path}: an ONNX export has its own size, tokenizer and precision (export again to change)"
            )
        towers = OnnxTowers(path, device)
        return Model(towers, towers.preprocess(), towers.tokenizer(), str(path), towers.fingerprint())
    payload = at_image_size(load_payload(path, tokenizer, require_tokenizer=False), image_size, "transformers", path)
    if payload.get("partial"):
        raise ValueError(
            f"{path}: only the {payload['partial']} tower; a usable model needs both (fine-tune from it instead)"
        )
    cfg = model_config_from_dict(payload["model_config"])
    net = empty_model(cfg)  # no random init: every tensor comes from the file
    missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the saved config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    tok = tokenizer_from_payload(payload) if payload["tokenizer"]["proto"].numel() else None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device=device, dtype=as_dtype(dtype)).eval()
    fingerprint = weights_fingerprint(payload["state_dict"])
    return Model(net, checkpoint_transform(payload["preprocess"]), tok, str(path), fingerprint)
