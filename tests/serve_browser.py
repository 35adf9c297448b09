"""What the real-browser tests of `siglip serve` share: a tiny saved model with an index of drawn
shapes, the server started in a subprocess on a free loopback port, and headless Chromium driven by
Selenium (skipped, with the reason, where Debian's chromium / chromium-driver are not installed).
The server itself is started by tests/serve_helpers.Server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

from tests.serve_helpers import Server, free_port

CHROMIUM = os.environ.get("SIGLIP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SIGLIP_CHROMEDRIVER", "/usr/bin/chromedriver")
SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("orange", "circle"), ("purple", "square")]


def draw_shape(path: Path, colour: str, shape: str, size: int = 96) -> Path:
    """A `colour` `shape` on white, size x size pixels, saved as PNG at `path`."""
    img = Image.new("RGB", (size, size), "white")
    d, m = ImageDraw.Draw(img), size // 6
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def tiny_model_and_index(root: Path, tokenizer, copies: int = 2) -> tuple[Path, Path, list[Path]]:
    """A random tiny model saved at root/m.pt, len(SHAPES) * copies drawn images under root/photos,
    and `siglip embed`'s index of them at root/photos.index. Returns (model, index, images)."""
    import siglip
    from siglip.cli import main as cli
    from siglip.config import ModelConfig
    from siglip.model import SigLIP

    torch.manual_seed(0)
    cfg = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size)
    net = SigLIP(cfg)
    with torch.no_grad():
        net.b.fill_(-1.0)  # probabilities away from 0 so the page shows readable numbers
    siglip.save_model(root / "m.pt", net, tokenizer, "bicubic")
    images = [
        draw_shape(root / "photos" / f"{colour}-{shape}-{i}.png", colour, shape, 64 + 16 * i)
        for i in range(copies)
        for colour, shape in SHAPES
    ]
    rc = cli(["embed", str(root / "photos"), "--model", str(root / "m.pt"), "--out", str(root / "photos.index")])
    assert rc == 0
    return root / "m.pt", root / "photos.index", images


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serving(args: list[str], log: Path) -> Iterator[str]:
    """`siglip serve ARGS` (tests/serve_helpers.Server) until the block ends; yields its base URL.
    Afterwards its log must hold no traceback: no request the browser made raised in the server."""
    server = Server(args, log)
    try:
        yield server.url
    finally:
        server.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


@contextlib.contextmanager
def static_folder(folder: Path, log: Path) -> Iterator[str]:
    """Serves `folder` with `python -m http.server` on a free loopback port; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/", proc, log)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def require_chromium() -> None:
    """Skips the test, saying why, without Debian's chromium + chromium-driver or selenium."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)")
    pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")


def chromium():
    """A headless Chromium WebDriver (Debian's chromium + chromium-driver); skips the test without them."""
    require_chromium()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)
