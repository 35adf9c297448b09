"""Two gloo processes on the CPU == one process on the concatenated batch (DDP, FSDP2, accumulation),
full checkpoints across strategies, SLURM variables, and torchrun + training/train.py with --resume."""

import functools
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siglip.config import ModelConfig
from siglip.distributed import (
    Runtime,
    clip_grad_norm,
    common_batch_size,
    env_from_slurm,
    first_slurm_host,
    full_model_state,
    full_optimizer_state,
    load_full_state,
    sync_replicated_grads,
    wrap_model,
)
from siglip.loss import sigmoid_loss, softmax_loss
from siglip.model import SigLIP
from siglip.train.accumulate import forward_backward

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
N = 8  # global batch
CASES = {  # name -> (strategy, loss, per-rank micro-batch size)
    "ddp": ("ddp", sigmoid_loss, 0),
    "fsdp": ("fsdp", sigmoid_loss, 0),
    "ddp_softmax_accum": ("ddp", softmax_loss, 2),
    "fsdp_accum": ("fsdp", sigmoid_loss, 1),
}
MAX_NORM = 0.5  # small enough that clipping acts: the clip must see the global gradient norm


def tiny_model() -> SigLIP:
    torch.manual_seed(0)
    return SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 64, (N, 8), generator=g)


def train_step(model, forward, rt, loss_fn, pixels, ids, micro):
    model.b.requires_grad_(loss_fn is not softmax_loss)  # as train.py: DDP must not wait for an unused b
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # first step: lr * grad
    loss = forward_backward(forward, model, pixels, ids, functools.partial(loss_fn, group=rt.group), micro)
    sync_replicated_grads(model, forward, rt)
    clip_grad_norm(model, MAX_NORM, rt)
    opt.step()
    return loss, opt


def nan_in_one_shard(model, loss, rt: Runtime) -> list[bool]:
    """The divergence guard's verdict before and after rank 1 alone gets a NaN in its gradient shard."""
    from torch.distributed.tensor import DTensor

    from siglip.train.guard import all_finite

    before = all_finite(loss, model, rt.group)
    if rt.rank == 1:
        shard = next(
            p.grad.to_local() for p in model.parameters() if isinstance(p.grad, DTensor) and p.grad.to_local().numel()
        )
        shard.view(-1)[0] = float("nan")
    return [before, all_finite(loss, model, rt.group)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    rt = Runtime(rank, WORLD, 0, torch.device("cpu"), dist.group.WORLD)
    pixels, ids = batch()
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    results = {}
    for name, (strategy, loss_fn, micro) in CASES.items():
        model = tiny_model()
        model.b.requires_grad_(loss_fn is not softmax_loss)
        forward = wrap_model(model, rt, strategy)
        loss, opt = train_step(model, forward, rt, loss_fn, pixels[rows], ids[rows], micro)
        state, optim_state = full_model_state(model), full_optimizer_state(model, opt)
        results[name] = {"loss": loss, "state": state}
        if name == "fsdp":  # a full checkpoint loads back into a fresh sharded model and optimizer
            fresh = tiny_model()
            wrap_model(fresh, rt, "fsdp")
            fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
            everywhere = [state, optim_state]  # as every rank reads them from the checkpoint file
            dist.broadcast_object_list(everywhere, src=0)
            load_full_state(fresh, fresh_opt, *everywhere)
            results["fsdp_reloaded"] = {"state": full_model_state(fresh)}
            results["guard"] = nan_in_one_shard(model, loss, rt)
    # ranks left with different counts by unreadable images train on the smallest (0 = all skip)
    results["common_batch_size"] = [common_batch_size((5, 3)[rank], rt), common_batch_size((4, 0)[rank], rt)]
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn")
    return torch.load(tmp / "results.pt", weights_only=True)


def test_ranks_agree_on_the_smallest_batch(two_ranks):
    assert two_ranks["common_batch_size"] == [3, 0]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(two_ranks, case):
    strategy, loss_fn, micro = CASES[case]
    model = tiny_model()
    pixels, ids = batch()
    loss, _ = train_step(model, model, Runtime(), loss_fn, pixels, ids, 0)
    got = two_ranks[case]
    torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-6)
    ref = model.state_dict()
    assert set(got["state"]) == set(ref)
    moved = 0
    for k, v in ref.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"{case}: {k}")
        moved += not torch.equal(v, tiny_model().state_dict()[k])
    assert moved > 0.9 * len(ref)  # the step changed (nearly) everything: the comparison means something


def test_fsdp_full_checkpoint_roundtrip(two_ranks):
    for k, v in two_ranks["fsdp"]["state"].items():
        torch.testing.assert_close(two_ranks["fsdp_reloaded"]["state"][k], v, rtol=0, atol=0, msg=k)


def test_guard_sees_a_nan_in_another_ranks_shard(two_ranks):
    assert two_ranks["guard"] == [True, False]  # rank 0's shard is finite; rank 1's NaN stops both


def test_slurm_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[012-015]"}
    got = env_from_slurm(env)
    assert got["RANK"] == "5" and got["WORLD_SIZE"] == "8" and got["LOCAL_RANK"] == "1"
    assert got["MASTER_ADDR"] == "gpu012"
    assert first_slurm_host("a1,a2") == "a1" and first_slurm_host("node7") == "node7"
    assert env_from_slurm({**env, "RANK": "0"}) == {}  # torchrun inside SLURM: torchrun wins
    assert env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}


# --------------------------------------------------------------------------------------------------
# The script: 2 processes (torchrun's environment variables), stopped and resumed, end where one
# process ends. (Processes are started directly rather than through the torchrun launcher to save
# two interpreter starts; torchrun sets exactly these variables.)

CONFIG = """
from siglip.config import Config, ModelConfig

def get_config():
    cfg = Config()
    cfg.model = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64)
    cfg.data.num_workers = 0
    cfg.tokenizer.vocab_size = 40
    cfg.train.batch_size = 8
    cfg.train.steps = 4
    cfg.train.device = "cpu"
    cfg.train.log_every = 1
    cfg.optim.warmup_steps = 2
    return cfg
"""


def write_data(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    lines = ["image,caption"]
    for i in range(24):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png,a photo of thing number {i % 7} in colour {i % 3}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    (root / "tiny_config.py").write_text(CONFIG)
    return root / "pairs.csv"


def run_two(args: list[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
        env.update(MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        procs.append(
            subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-4000:]


def test_two_processes_resumed_equal_one_process(tmp_path, monkeypatch):
    data = write_data(tmp_path)
    args = ["training/train.py", "--config", str(tmp_path / "tiny_config.py"), "--data-path", str(data)]
    monkeypatch.setattr(sys, "argv", [*args, "--output-dir", str(tmp_path / "one")])
    runpy.run_path(str(ROOT / "training/train.py"), run_name="__main__")  # one process, in this one
    multi = [*args, "--output-dir", str(tmp_path / "two"), "--config.train.strategy=ddp"]
    run_two([*multi, "--config.train.stop_at_step=2"])
    run_two([*multi, "--resume"])
    one = torch.load(tmp_path / "one" / "siglip_tiny.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two" / "siglip_tiny.pt", weights_only=True)["state_dict"]
    for k, v in one.items():
        # attention key biases have an exactly-zero gradient (a softmax ignores a constant per query);
        # Adam turns their float noise into lr-sized steps that differ with the summation order
        if not k.endswith("attn.k.bias"):
            torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5, msg=k)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"loss"' in x]) == 4  # rank 0 alone logs: one line per step
