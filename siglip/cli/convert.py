"""siglip convert SRC DST --to {siglip,hf,onnx} [--tokenizer FILE] [--vision-only] [--image-size S]
[--quantize int8] [--fp16]: the checkpoint converter.

siglip convert /models/siglip-base-patch16-224 siglip_b16.pt --to siglip
siglip convert ./checkpoints/siglip_finetune.pt ./export --to hf
siglip convert hf-hub:timm/ViT-B-16-SigLIP siglip_b16.pt --to siglip     # a Hub id (the hub extra)
siglip convert siglip_b16.pt ./vision --to hf --vision-only     # SiglipVisionModel, for a VLM
siglip convert siglip_b16.pt siglip_b16_384.pt --to siglip --image-size 384
siglip convert siglip_b16.pt ./b16_onnx --to onnx --quantize int8      # for onnxruntime (docs/onnx.md)
"""

from __future__ import annotations

PASSTHROUGH = True


def main(argv: list[str]) -> int:
    from siglip.interop.__main__ import main as convert_main

    if "-h" in argv or "--help" in argv:
        print(__doc__)
    convert_main(argv)
    return 0
