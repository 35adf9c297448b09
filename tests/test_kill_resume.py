"""kill -9 under torchrun: 2 gloo processes are SIGKILLed in the middle of a step or half-way through
writing a checkpoint, then `--resume`d; the final weights and the loss of every step must equal
an uninterrupted run's bit for bit (same world size). Also: resuming on another world size.

The kill comes from inside the victim at a chosen point (an optimizer step pre-hook, or torch.save
writing half its bytes first), so each case is reproducible; torchrun then tears the other rank
down, as it does when a node dies. One DDP case runs in the default suite; the rest are marked slow
(`make test-slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
from siglip.config import Config, ModelConfig

def get_config():
    cfg = Config()
    cfg.model = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64)
    cfg.data.num_workers = 0
    cfg.tokenizer.vocab_size = 40
    cfg.train.batch_size = 8
    cfg.train.steps = 6
    cfg.train.device = "cpu"
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 2
    cfg.optim.warmup_steps = 2
    return cfg
"""

# Runs the training script after arming one fault from the environment (test-only; nothing in siglip/).
KILLER = """
import io, os, runpy, signal, sys
import torch

rank = int(os.environ.get("RANK", "0"))
victim = int(os.environ.get("KILL_RANK", "0"))
at_step, at_save = int(os.environ.get("KILL_AT_STEP", "0")), int(os.environ.get("KILL_AT_SAVE", "0"))
if at_step and rank == victim:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = [0]

    def hook(optimizer, args, kwargs):  # gradients computed and reduced, weights not yet updated
        steps[0] += 1
        if steps[0] == at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_pre_hook(hook)
if at_save and rank == 0:
    real_save, saves = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == at_save:  # half the bytes reach the (temporary) file, then the process dies
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("kill_data")
    g = torch.Generator().manual_seed(0)
    lines = ["image,caption"]
    for i in range(24):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png,a photo of thing number {i % 7} in colour {i % 3}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    try:  # the same pairs as parquet, the images inside as the datasets Image struct
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [line.split(",", 1) for line in lines[1:]]
        images = [{"bytes": (root / name).read_bytes(), "path": None} for name, _ in rows]
        pq.write_table(
            pa.table({"image": images, "caption": [c for _, c in rows]}), root / "pairs.parquet", row_group_size=5
        )
    except ImportError:
        pass
    (root / "tiny_config.py").write_text(CONFIG)
    (root / "killer.py").write_text(KILLER)
    return root


def torchrun_command(data: Path, out: Path, *extra: str, nproc: int = 2) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(data / "killer.py"), "training/train.py", "--config", str(data / "tiny_config.py")]
    return cmd + ["--data-path", str(data / "pairs.csv"), "--output-dir", str(out), *extra]


def torchrun(
    data: Path, out: Path, *extra: str, nproc: int = 2, env: dict | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = torchrun_command(data, out, *extra, nproc=nproc)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def loss_curve(out: Path) -> dict[int, float]:
    """step -> loss; a step logged twice (before a kill and again after the resume) keeps the last."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "siglip_tiny.pt", weights_only=True)["state_dict"]


_references: dict[tuple, Path] = {}


def reference(data: Path, tmp_path_factory, extra: tuple[str, ...]) -> Path:
    """The uninterrupted 2-process run of this configuration (once per module)."""
    if extra not in _references:
        out = tmp_path_factory.mktemp("reference")
        ok(torchrun(data, out, *extra))
        _references[extra] = out
    return _references[extra]


def kill_and_resume(data, tmp_path, tmp_path_factory, extra: tuple[str, ...], fault: dict) -> None:
    ref = reference(data, tmp_path_factory, extra)
    out = tmp_path / "run"
    killed = torchrun(data, out, *extra, env=fault)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]  # torchrun saw the kill
    assert not (out / "siglip_tiny.pt").exists()
    if "KILL_AT_SAVE" in fault:
        assert list(out.glob(".checkpoint-*.tmp")), "the kill did not land inside a checkpoint write"
    ok(torchrun(data, out, *extra, "--resume"))
    assert not list(out.glob(".*.tmp"))  # the half-written file was cleaned up
    assert loss_curve(out) == loss_curve(ref)  # every step's loss, bit for bit
    ref_w, got = weights(ref), weights(out)
    assert ref_w.keys() == got.keys()
    for k, v in ref_w.items():
        assert torch.equal(got[k], v), k


DDP, FSDP = ("--config.train.strategy=ddp",), ("--config.train.strategy=fsdp",)
ACCUM = ("--config.train.micro_batch_size=2",)


def test_ddp_killed_mid_step_resumes_bit_exact(data, tmp_path, tmp_path_factory):
    # step 5 of 6 (checkpoints at 2 and 4): the resume replays step 5 from checkpoint 4
    kill_and_resume(data, tmp_path, tmp_path_factory, DDP, {"KILL_AT_STEP": "5"})


# parquet, 2 workers: row groups of 5 in chunks of >= 4 rows dealt to the workers of each rank
PARQUET = ("--data-path", "pairs.parquet", "--config.data.num_workers=2", "--config.data.shuffle_buffer=4")

SLOW_CASES = {
    "ddp-write": (DDP, {"KILL_AT_SAVE": "2"}),  # half-way through writing step 4's checkpoint
    "ddp-rank1-step": (DDP, {"KILL_AT_STEP": "3", "KILL_RANK": "1"}),
    "ddp-accum-step": (DDP + ACCUM, {"KILL_AT_STEP": "4"}),
    "ddp-accum-write": (DDP + ACCUM, {"KILL_AT_SAVE": "3"}),  # the third checkpoint (step 6, the last)
    "fsdp-step": (FSDP, {"KILL_AT_STEP": "5"}),
    "fsdp-write": (FSDP, {"KILL_AT_SAVE": "2"}),
    "fsdp-accum-step": (FSDP + ACCUM, {"KILL_AT_STEP": "3"}),
    "fsdp-accum-write": (FSDP + ACCUM, {"KILL_AT_SAVE": "2"}),
    "ddp-parquet-step": (DDP + PARQUET, {"KILL_AT_STEP": "5"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_killed_runs_resume_bit_exact(data, tmp_path, tmp_path_factory, case):
    extra, fault = SLOW_CASES[case]
    if "pairs.parquet" in extra:
        pytest.importorskip("pyarrow")
        extra = tuple(str(data / x) if x == "pairs.parquet" else x for x in extra)
    kill_and_resume(data, tmp_path, tmp_path_factory, extra, fault)


@pytest.mark.slow
def test_resume_on_another_world_size_says_what_changes(data, tmp_path, tmp_path_factory):
    """A 2-process run killed at step 5 resumes on 1 process: a logged statement, and the same
    training up to float summation order (the global batch and its pairs are unchanged)."""
    ref = reference(data, tmp_path_factory, DDP)
    out = tmp_path / "run"
    assert torchrun(data, out, *DDP, env={"KILL_AT_STEP": "5"}).returncode != 0
    resumed = ok(torchrun(data, out, *DDP, "--resume", nproc=1))
    assert "resuming a 2-process checkpoint on 1 process(es)" in resumed.stderr
    assert "manifest data: every step sees the same pairs as before" in resumed.stderr
    got, want = loss_curve(out), loss_curve(ref)
    assert got.keys() == want.keys() and all(abs(got[s] - want[s]) < 1e-5 for s in want)
    ref_w, w = weights(ref), weights(out)
    for k, v in ref_w.items():
        if not k.endswith("attn.k.bias"):  # exactly-zero gradients: Adam turns float noise into lr-sized steps
            torch.testing.assert_close(w[k], v, rtol=1e-4, atol=1e-5, msg=k)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [d for c in children for d in descendants(c)] + children


@pytest.mark.slow
def test_ddp_killed_at_a_random_moment(data, tmp_path, tmp_path_factory):
    """The whole job (torchrun and both ranks) SIGKILLed at a random moment, as by a power cut; then
    resumed (or restarted, if no checkpoint existed yet). KILL_SEED=N replays a failing draw."""
    import random
    import signal
    import time

    ref = reference(data, tmp_path_factory, DDP)
    seed = int(os.environ.get("KILL_SEED", random.randrange(1_000_000)))
    delay = random.Random(seed).uniform(4.0, 14.0)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        torchrun_command(data, out, *DDP), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + delay
    while job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in [*descendants(job.pid), job.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()
    resume = ("--resume",) if list(out.glob("checkpoint*.pt")) else ()
    ok(torchrun(data, out, *DDP, *resume))
    assert loss_curve(out) == loss_curve(ref), f"KILL_SEED={seed} (killed after {delay:.1f} s)"
    for k, v in weights(ref).items():
        assert torch.equal(weights(out)[k], v), f"{k}, KILL_SEED={seed}"
