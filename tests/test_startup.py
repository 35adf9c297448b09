"""Start-up: `import siglip` imports neither torch nor torchvision, `siglip --help` no torch, and
loading a model and embedding a text (what `siglip search "text"` does) no torchvision and no
torch._dynamo; images still get the checkpoint's own transform, built at their first use. Each check
runs in a fresh process, so what an earlier test imported does not hide a regression. Before: `import
siglip` imported torchvision (1.3 s of 3.5 s), and loading a model imported torch._dynamo."""

from __future__ import annotations

import pickle
import subprocess
import sys

import torch
from PIL import Image

import siglip
from siglip.config import ModelConfig
from siglip.model import SigLIP
from siglip.transforms import Deferred, image_transform
from tests.conftest import REPO

HEAVY = ("torchvision", "torch._dynamo")


def loaded_after(code: str) -> dict[str, bool]:
    """{module: imported?} for torch and HEAVY after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(*[m in sys.modules for m in ('torch',) + {HEAVY!r}])"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    return dict(zip(("torch",) + HEAVY, (x == "True" for x in out[-3:])))


def test_import_siglip_and_help_import_no_torch():
    assert loaded_after("import siglip") == {"torch": False, "torchvision": False, "torch._dynamo": False}
    got = loaded_after(
        "from siglip.cli import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    )
    assert not any(got.values()), got


def test_load_and_embed_a_text_import_no_torchvision(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size)
    siglip.save_model(tmp_path / "m.pt", SigLIP(cfg), tokenizer, "bicubic")
    code = f"import siglip\nm = siglip.load({str(tmp_path / 'm.pt')!r})\nm.embed_texts(['a red square'])"
    got = loaded_after(code)
    assert got == {"torch": True, "torchvision": False, "torch._dynamo": False}, got


def test_the_deferred_transform_is_the_checkpoint_transform(tmp_path, tokenizer):
    """The transform `siglip.load` gives is built at its first image and equals image_transform's;
    it pickles before and after (DataLoader workers get it)."""
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size)
    siglip.save_model(tmp_path / "m.pt", SigLIP(cfg), tokenizer, "bicubic")
    pre = siglip.load(tmp_path / "m.pt").preprocess
    assert isinstance(pre, Deferred) and pre.fn is None
    img = Image.new("RGB", (23, 17), (200, 40, 10))
    want = image_transform(16, "bicubic")(img)
    torch.testing.assert_close(pickle.loads(pickle.dumps(pre))(img), want, rtol=0, atol=0)
    torch.testing.assert_close(pre(img), want, rtol=0, atol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(pre))(img), want, rtol=0, atol=0)
    assert tuple(pre.transforms[1].size) == (16, 16)  # the built Compose's attributes, as before
