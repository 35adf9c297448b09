"""siglip convert SRC DST --to {siglip,hf} [--tokenizer FILE]: the checkpoint converter.

siglip convert /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
siglip convert ./checkpoints/siglip_finetune.pt ./export --to hf
siglip convert hf-hub:timm/ViT-B-16-SigLIP siglip_b16.pt --to siglip     # a Hub id (the hub extra)
"""

from __future__ import annotations

PASSTHROUGH = True


def main(argv: list[str]) -> int:
    from siglip.interop.__main__ import main as convert_main

    if "-h" in argv or "--help" in argv:
        print(__doc__)
    convert_main(argv)
    return 0
