"""Checkpoints of other toolkits in and out. Every reader returns one typed payload
(`siglip.checkpoint.Payload`: model config, state dict in OUR parameter names, tokenizer,
preprocessing), so training and use downstream never know where a model came from. One module per
format: Hugging Face `SiglipModel` / `Siglip2Model` (`hf.py`, also the export), open_clip (`open_clip.py`),
big_vision .npz (`big_vision.py`), and the SigLIP 2 facts they share (`siglip2.py`: Gemma tokenizer
kind, open_clip's GELU per tower); key maps are data (`rules.py`) read in both directions; files are read
without running pickled code (`tensors.py`); `detect.py` tells the formats apart by content, after
`hub.py` has turned a Hugging Face Hub id into a local path (the cache, else a download).
`onnx.py` writes an ONNX folder for onnxruntime (out only; `siglip.onnx_model` runs it).
`python -m siglip.interop SRC DST --to {siglip,hf,onnx}` converts (`python -m siglip.convert` too).
"""

from siglip.interop.detect import load_into, load_payload, load_pretrained, load_tokenizer
from siglip.interop.hf import to_hf

__all__ = ["load_into", "load_payload", "load_pretrained", "load_tokenizer", "to_hf"]
