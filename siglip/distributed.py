"""Many processes: the process group, DDP / FSDP2 wrapping, rank-0 helpers, full checkpoints.

    torchrun --standalone --nproc_per_node 2 training/train.py --config configs/demo_config.py  # CPU, gloo
    srun python training/train.py ...   # SLURM: one task per GPU; RANK/WORLD_SIZE come from SLURM_*

Conventions:
- The global batch is split evenly: each rank holds `batch_size / world_size` pairs.
- The losses with a group (`siglip.loss`, `siglip.loss.ring`) return the GLOBAL loss (the same
  on every rank). Their backward gives each rank's local embeddings world_size x dL/dz_local and
  t and b gradients whose mean over ranks is dL/dt (dL/db), so gradient averaging across ranks
  (DDP, FSDP2) equals one process on the whole batch.
- Strategy "ddp" replicates the model; "fsdp" shards every transformer block and each tower with
  FSDP2's `fully_shard`. t' and b stay ordinary replicated tensors in both (FSDP2 would make them
  DTensors that cannot meet the plain embeddings in the loss); `sync_replicated_grads` averages
  them under FSDP2.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


@dataclass
class Runtime:
    """Where this process stands. `group` is None in a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes files."""
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[012-015,020]` -> `gpu012`, `a1,a2` -> `a1`."""
    m = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read SLURM_JOB_NODELIST={nodelist!r}")
    return m.group(1) + (m.group(2) or "")


def env_from_slurm(environ: dict[str, str]) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's,
    for jobs started by `srun` with one task per device. Variables already set win."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_slurm_host(environ.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(29500 + int(environ.get("SLURM_JOB_ID", "0")) % 1000),
    }


def init_runtime(device: str = "auto") -> Runtime:
    """Join the process group that torchrun (or SLURM) describes: nccl on CUDA, gloo on the CPU.
    Without those variables this is a single-process run and no group is made.
    `device`: "auto" (cuda if available), "cpu" or "cuda"."""
    os.environ.update(env_from_slurm(dict(os.environ)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(device=torch.device("cuda" if use_cuda else "cpu") if device == "auto" else torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        "nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30), rank=rank, world_size=world_size
    )
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Runtime(rank, world_size, local_rank, dev, dist.group.WORLD)


def close_runtime(rt: Runtime) -> None:
    if rt.group is not None and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, rt: Runtime):
    """Rank 0's `obj` on every rank (e.g. the tokenizer trained on rank 0)."""
    if rt.group is None:
        return obj
    box = [obj if rt.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(x: float, rt: Runtime) -> float:
    """Sum of a number over ranks (e.g. skipped samples); every rank must call it."""
    if rt.group is None:
        return x
    t = torch.tensor(float(x), dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, group=rt.group)
    return t.item()


def common_batch_size(n: int, rt: Runtime) -> int:
    """The smallest local batch over ranks. Skipped (unreadable) samples can leave ranks with
    different counts, but the losses over a group need equal blocks and every rank must take the
    same steps: each rank trains on its first `common_batch_size` pairs (0 = all skip the step)."""
    if rt.group is None:
        return n
    t = torch.tensor(n, dtype=torch.long, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=rt.group)
    return int(t.item())


def barrier(rt: Runtime) -> None:
    if rt.group is not None:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Wrapping


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of both towers: the FSDP2 units."""
    return [*model.image.encoder.blocks, *model.text.encoder.blocks]


def wrap_model(model: nn.Module, rt: Runtime, strategy: str = "ddp") -> nn.Module:
    """The module to call for the forward pass. DDP returns a wrapper (keep using `model` for its
    parameters, t and b); FSDP2 shards `model` in place (each block, then each tower) and returns it.
    Single process: `model` itself. Build the optimizer after this."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if rt.group is None:
        return model
    if strategy == "ddp":
        ids = [rt.local_rank] if rt.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    # the towers return views (the MAP probe's token, the last text token); nothing modifies them in
    # place, which is what FSDP2 warns about
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in blocks_of(model):
        fully_shard(block)
    fully_shard(model.image)
    fully_shard(model.text)
    return model


def no_sync(forward: nn.Module) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for micro-batches before the last (gradients accumulate
    locally and the last backward reduces their sum). FSDP2 reduce-scatters every micro-batch
    instead (a sum of reduce-scatters is the reduce-scatter of the sum) and keeps grads sharded."""
    if isinstance(forward, nn.parallel.DistributedDataParallel):
        return forward.no_sync()
    return contextlib.nullcontext()


def _replicated(model: nn.Module) -> Iterator[nn.Parameter]:
    from torch.distributed.tensor import DTensor

    return (p for p in model.parameters() if p.grad is not None and not isinstance(p, DTensor))


def sync_replicated_grads(model: nn.Module, forward: nn.Module, rt: Runtime) -> None:
    """Average over ranks the gradients of parameters that FSDP2 does not manage (t', b).
    A no-op for DDP (it already did) and single process."""
    if rt.group is None or isinstance(forward, nn.parallel.DistributedDataParallel):
        return
    grads = [p.grad for p in _replicated(model)]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads]) / rt.world_size
        dist.all_reduce(flat, group=rt.group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def clip_grad_norm(model: nn.Module, max_norm: float, rt: Runtime) -> Tensor:
    """Scale all gradients so that their global L2 norm is at most `max_norm`; returns the norm
    before clipping. Sharded (DTensor) gradients add their local squares across ranks; replicated
    ones count once."""
    from torch.distributed.tensor import DTensor

    sharded, replicated = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().float().pow(2).sum()
        else:
            replicated += g.float().pow(2).sum()
    if rt.group is not None and any(isinstance(g, DTensor) for g in grads):
        dist.all_reduce(sharded, group=rt.group)
    norm = (sharded + replicated).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g.to_local() if isinstance(g, DTensor) else g).mul_(scale)
    return norm


# --------------------------------------------------------------------------------------------------
# Full (unsharded) state for checkpoints, the same file whatever the strategy and world size


def _full(x):
    """A DTensor's whole tensor on the CPU (collective: every rank calls it in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(x, DTensor):
        x = x.full_tensor()
    return x.detach().cpu() if isinstance(x, Tensor) else x


def _like(full, ref):
    """`full` shaped as `ref`: sharded the same way when `ref` is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.dtype), ref.device_mesh, ref.placements)
    return full


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's tensors on the CPU, by parameter name, on every rank (collective under FSDP2)."""
    return {k: _full(v) for k, v in model.state_dict().items()}


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own (positional) order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with whole tensors and parameters named instead of numbered, so it
    loads under any strategy and world size (collective under FSDP2)."""
    sd, names = optimizer.state_dict(), _param_names(model, optimizer)
    return {
        "state": {names[i]: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    }


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Inverse of `full_model_state` / `full_optimizer_state`: every rank passes the whole dicts and
    keeps its shard."""
    current = model.state_dict()
    missing, unexpected = set(current) - set(model_state), set(model_state) - set(current)
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict({k: _like(model_state[k], v) for k, v in current.items()})
    names = _param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    params = dict(model.named_parameters())
    if [len(g["params"]) for g in optim_state["param_groups"]] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("checkpoint optimizer has other parameter groups than this run's optimizer")
    optimizer.load_state_dict(
        {
            "state": {
                index[n]: {k: _like(v, params[n]) if isinstance(v, Tensor) and v.ndim else v for k, v in s.items()}
                for n, s in optim_state["state"].items()
            },
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_state["param_groups"]],
        }
    )
