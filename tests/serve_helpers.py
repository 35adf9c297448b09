"""What the `siglip serve` tests share: a tiny model with an image index and a text index built by
`siglip embed`, and a server started in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

import siglip
from siglip.cli import main
from siglip.config import ModelConfig
from siglip.model import SigLIP
from tests.conftest import CAPTIONS, REPO, write_image

COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 20), (20, 220, 220), (200, 20, 200)]


def build_world(root: Path, tokenizer) -> dict:
    """A tiny model (t' and b off their init), 7 images (one 600 x 400), an image index over them and a
    text index over CAPTIONS, both written by `siglip embed`."""
    torch.manual_seed(0)
    net = SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=tokenizer.vocab_size))
    with torch.no_grad():
        net.t_prime.fill_(1.3)
        net.b.fill_(-0.7)
    siglip.save_model(root / "m.pt", net, tokenizer, "bicubic")
    images = [write_image(root / "photos" / f"{i:02d}.png", c, (16 + 3 * i, 14 + i)) for i, c in enumerate(COLOURS)]
    images.append(write_image(root / "photos" / "big.png", (90, 120, 200), (600, 400)))
    (root / "texts.txt").write_text("\n".join(CAPTIONS) + "\n")
    common = ["--model", str(root / "m.pt"), "--workers", "0", "--store-dtype", "float32"]
    assert main(["embed", str(root / "photos"), "--out", str(root / "photos.index"), *common]) == 0
    assert main(["embed", "--texts", str(root / "texts.txt"), "--out", str(root / "texts.index"), *common]) == 0
    return {
        "model": root / "m.pt",
        "images": sorted(images),
        "photos": root / "photos.index",
        "texts": root / "texts.index",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`siglip serve ARGS` in a subprocess on a free loopback port; `url`, `pid`, `log` (its output)."""

    def __init__(self, args: list[str], log: Path, timeout: float = 90.0):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
        cmd = [sys.executable, "-m", "siglip", "serve", "--port", str(self.port), "--log-level", "warning", *args]
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"siglip serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"siglip serve did not answer /health within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()[-4000:]

    def rss_mb(self) -> float:
        """Resident memory of the server process, MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL after `timeout` s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def healthy(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=10).status_code == 200
