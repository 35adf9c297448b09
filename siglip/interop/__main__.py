"""`python -m siglip.interop` (also `python -m siglip.convert`): convert a checkpoint to our model
file, a Hugging Face folder or an ONNX folder.

    python -m siglip.interop /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
    python -m siglip.interop ./checkpoints/siglip_finetune.pt ./export --to hf
    python -m siglip.interop big_vision_b16.npz b16.pt --to siglip --tokenizer cc_en.model
    python -m siglip.interop google/siglip2-base-patch16-224 siglip2_b16.pt --to siglip   # a Hub id
    python -m siglip.interop b16.pt ./b16_onnx --to onnx --quantize int8      # onnxruntime (siglip.interop.onnx)
"""

from __future__ import annotations

import argparse

from siglip.checkpoint import atomic_save
from siglip.interop.detect import load_payload
from siglip.interop.hf import to_hf
from siglip.resolution import at_image_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m siglip.interop",
        description="Convert a SigLIP checkpoint (ours, Hugging Face, open_clip, big_vision) to our model file, a Hugging Face folder or an ONNX folder.",
    )
    parser.add_argument(
        "src", help="checkpoint file or folder (format detected from its content), or a Hub id (org/name[@revision])"
    )
    parser.add_argument("dst", help="our model file (.pt) for --to siglip, a folder for --to hf")
    parser.add_argument("--to", choices=("siglip", "hf", "onnx"), required=True)
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="a SentencePiece model or tokenizer.json, a folder holding one, or a Hub id (its tokenizer files "
        "alone), when none lies beside SRC",
    )
    parser.add_argument(
        "--vision-only", action="store_true", help="--to hf: the image tower alone (SiglipVisionModel), for a VLM"
    )
    parser.add_argument(
        "--image-size", type=int, default=0, help="a fixed-resolution model at this size (position grid resized)"
    )
    parser.add_argument("--quantize", choices=("int8",), default="", help="--to onnx: onnxruntime dynamic int8 matmuls")
    parser.add_argument("--fp16", action="store_true", help="--to onnx: float16 towers (for GPUs)")
    args = parser.parse_args(argv)
    if args.vision_only and args.to != "hf":
        parser.error("--vision-only goes with --to hf")
    if (args.quantize or args.fp16) and args.to != "onnx":
        parser.error("--quantize / --fp16 go with --to onnx")
    payload = load_payload(args.src, args.tokenizer, require_tokenizer=not args.vision_only)
    payload = at_image_size(payload, args.image_size, "transformers", args.src)
    if args.to == "hf":
        to_hf(payload, args.dst, vision_only=args.vision_only)
    elif args.to == "onnx":
        from siglip.api import weights_fingerprint
        from siglip.interop.onnx import to_onnx

        to_onnx(payload, args.dst, args.quantize, args.fp16, weights_fingerprint(payload["state_dict"]))
    else:
        keep = ("format", "version", "model_config", "state_dict", "tokenizer", "preprocess", "partial")
        atomic_save({k: payload[k] for k in keep if k in payload}, args.dst)  # no optimizer state
    cfg = payload["model_config"]
    print(
        f"{args.src} -> {args.dst} ({args.to}): image {cfg['image']['width']}x{cfg['image']['depth']} "
        f"at {cfg['image_size']} px, text {cfg['text']['width']}x{cfg['text']['depth']}, L={cfg['text_length']}"
    )


if __name__ == "__main__":
    main()
