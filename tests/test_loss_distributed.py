"""Distributed losses with 2 and 4 gloo processes against one process on the concatenated batch:
the global loss on every rank, world_size * dL/dz for each rank's embeddings, and t, b gradients
whose mean over ranks is dL/dt, dL/db (the convention of siglip/loss/ring.py)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from siglip.loss import sigmoid_loss, softmax_loss

N_LOCAL, D, TILE = 6, 16, 4  # tile < local batch: the ring's blocks are tiled too
VARIANTS = [  # (name, loss keyword arguments)
    *[
        (f"{method}-{neg}", dict(method=method, negatives=neg, ratio=ratio, seed=7, tile=TILE))
        for method in ("ring", "all_gather")
        for neg, ratio in (("all", 1.0), ("random", 0.5), ("hard", 0.3), ("easy", 0.3))
    ],
    ("softmax", None),
]


def global_batch(world: int):
    g = torch.Generator().manual_seed(world)
    n = world * N_LOCAL
    zimg = F.normalize(torch.randn(n, D, generator=g), dim=1)
    ztxt = F.normalize(torch.randn(n, D, generator=g), dim=1)
    return zimg, ztxt, torch.tensor(12.0), torch.tensor(-4.0)


def run(fn, zimg, ztxt, t, b):
    inputs = [x.clone().requires_grad_() for x in (zimg, ztxt, t, b)]
    loss = fn(*inputs)
    loss.backward()
    return [loss.detach(), *(x.grad for x in inputs)]


def loss_fn(kwargs, group=None):
    if kwargs is None:
        return lambda zimg, ztxt, t, b: softmax_loss(zimg, ztxt, t, b, group=group)
    return lambda zimg, ztxt, t, b: sigmoid_loss(zimg, ztxt, t, b, group=group, **kwargs)


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        zimg, ztxt, t, b = global_batch(world)
        mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        results = {name: run(loss_fn(kw, dist.group.WORLD), zimg[mine], ztxt[mine], t, b) for name, kw in VARIANTS}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def assert_close(got, want, what, rel=1e-5):
    err = ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-12)).item()
    assert err <= rel, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_equals_one_process(world, tmp_path):
    # fork, not spawn: a spawned child re-imports torch and siglip, a minute for 4 of them on a busy
    # 2-core machine; workers run torch single-threaded, which is safe after a fork
    mp.start_processes(worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    batch = global_batch(world)
    for name, kw in VARIANTS:
        loss, gimg, gtxt, gt, gb = run(loss_fn(kw), *batch)
        for r, res in enumerate(ranks):
            mine = slice(r * N_LOCAL, (r + 1) * N_LOCAL)
            r_loss, r_gimg, r_gtxt = res[name][:3]
            assert_close(r_loss, loss, f"{name} loss on rank {r}")
            assert_close(r_gimg / world, gimg[mine], f"{name} zimg grad on rank {r}")
            assert_close(r_gtxt / world, gtxt[mine], f"{name} ztxt grad on rank {r}")
        assert_close(torch.stack([res[name][3] for res in ranks]).mean(), gt, f"{name} t grad")
        if kw is not None:  # the softmax loss has no b
            assert_close(torch.stack([res[name][4] for res in ranks]).mean(), gb, f"{name} b grad")
