"""`python -m siglip.interop` (also `python -m siglip.convert`): convert a checkpoint to our model
file or to a Hugging Face folder.

    python -m siglip.interop /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
    python -m siglip.interop ./checkpoints/siglip_finetune.pt ./export --to hf
    python -m siglip.interop big_vision_b16.npz b16.pt --to siglip --tokenizer cc_en.model
    python -m siglip.interop google/siglip2-base-patch16-224 siglip2_b16.pt --to siglip   # a Hub id
"""

from __future__ import annotations

import argparse

from siglip.checkpoint import atomic_save
from siglip.interop.detect import load_payload
from siglip.interop.hf import to_hf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m siglip.interop",
        description="Convert a SigLIP checkpoint (ours, Hugging Face, open_clip, big_vision) to our model file or a Hugging Face folder.",
    )
    parser.add_argument(
        "src", help="checkpoint file or folder (format detected from its content), or a Hub id (org/name[@revision])"
    )
    parser.add_argument("dst", help="our model file (.pt) for --to siglip, a folder for --to hf")
    parser.add_argument("--to", choices=("siglip", "hf"), required=True)
    parser.add_argument(
        "--tokenizer", default=None, help="SentencePiece model or tokenizer.json, if none lies beside SRC"
    )
    args = parser.parse_args(argv)
    payload = load_payload(args.src, args.tokenizer)
    if args.to == "hf":
        to_hf(payload, args.dst)
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
