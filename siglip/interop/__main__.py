"""`python -m siglip.interop` (also `python -m siglip.convert`): convert a checkpoint to our model
file or to a Hugging Face folder.

    python -m siglip.interop /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
    python -m siglip.interop ./checkpoints/siglip_finetune.pt ./export --to hf
    python -m siglip.interop big_vision_b16.npz b16.pt --to siglip --tokenizer cc_en.model
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
        description="Convert a SigLIP checkpoint (ours, Hugging Face, open_clip, big_vision) to our model file or a Hugging Face folder.",
    )
    parser.add_argument("src", help="checkpoint file or folder (format detected from its content)")
    parser.add_argument("dst", help="our model file (.pt) for --to siglip, a folder for --to hf")
    parser.add_argument("--to", choices=("siglip", "hf"), required=True)
    parser.add_argument(
        "--tokenizer", default=None, help="SentencePiece model or tokenizer.json, if none lies beside SRC"
    )
    parser.add_argument(
        "--vision-only", action="store_true", help="--to hf: the image tower alone (SiglipVisionModel), for a VLM"
    )
    parser.add_argument(
        "--image-size", type=int, default=0, help="a fixed-resolution model at this size (position grid resized)"
    )
    args = parser.parse_args(argv)
    if args.vision_only and args.to != "hf":
        parser.error("--vision-only goes with --to hf")
    payload = load_payload(args.src, args.tokenizer, require_tokenizer=not args.vision_only)
    payload = at_image_size(payload, args.image_size, "transformers", args.src)
    if args.to == "hf":
        to_hf(payload, args.dst, vision_only=args.vision_only)
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
