"""Injected models train under DistributedDataParallel and FSDP2 (``fully_shard``): 2 CPU processes, gloo.

After one SGD step the all-reduced gradients and the updated adapter parameters equal a single-process run on the
concatenated batch, for every method. Under FSDP2, ``save_adapters`` gathers the shards and the file loads into a
plain model. All cases run in one spawn of two workers (a module-scoped fixture, bounded by a deadline); each case
reports its own result.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.adapters._toy import METHOD_OPTIONS, TARGETS, all_methods, perturb, toy

WORLD = 2
BATCH = 4  # per rank
DEADLINE_S = 120
MODES = ["ddp", "fsdp2"]
METHODS = all_methods()

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return None
    return fully_shard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _injected(method):
    from surm_ops.adapters import inject
    from surm_ops.adapters.model import _adapter_parameters

    model = inject(toy(), method, TARGETS, **METHOD_OPTIONS.get(method, {}))
    perturb(_adapter_parameters(model).values())  # every gradient nonzero, identical on every rank
    return model


def _data():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(WORLD * BATCH, 5, 32, generator=gen), torch.randn(WORLD * BATCH, 5, 4, generator=gen)


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # an FSDP2 shard: gather it


def _step(model, forward, x, target):
    """One SGD step; returns {name: gradient} and {name: updated value} of the trainable parameters, gathered."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    nn.functional.mse_loss(forward(x), target).backward()
    grads = {n: _full(p.grad).detach().clone() for n, p in params.items()}
    torch.optim.SGD(params.values(), lr=0.1).step()
    return grads, {n: _full(p).detach().clone() for n, p in params.items()}


def _compare(what, got, want):
    assert got.keys() == want.keys(), f"{what}: names differ"
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{what} {n}: {m}")


def _case(rank, method, mode, mesh, out_dir):
    from surm_ops.adapters import load_adapters, save_adapters

    x, target = _data()
    reference = _injected(method)
    ref_grads, ref_params = _step(reference, reference, x, target)  # single process, the whole batch

    model = _injected(method)
    local = slice(rank * BATCH, (rank + 1) * BATCH)
    if mode == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        fully_shard = _fully_shard()
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    grads, params = _step(model, wrapped, x[local], target[local])
    _compare("gradient", grads, ref_grads)
    _compare("parameter", params, ref_params)
    if mode == "fsdp2":
        path = f"{out_dir}/{method}"
        save_adapters(model, path)  # every rank: the gather is collective
        dist.barrier()
        fresh = load_adapters(_injected(method), path)
        _compare("loaded", {n: p for n, p in fresh.named_parameters() if p.requires_grad}, ref_params)


def _worker(rank, port, out_dir, cases):
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import os

        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    results = {}
    try:
        mesh = None
        if _fully_shard() is not None:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (WORLD,))
        for method, mode in cases:
            key = f"{mode}:{method}"
            try:
                if mode == "fsdp2" and mesh is None:
                    results[key] = "skip: torch.distributed.fsdp.fully_shard is not available"
                    continue
                _case(rank, method, mode, mesh, out_dir)
                results[key] = None
            except Exception:
                results[key] = traceback.format_exc()
            dist.barrier()
    finally:
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("distributed")
    cases = [(m, mode) for mode in MODES for m in METHODS]
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out_dir), cases), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the distributed workers did not finish in {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    merged: dict[str, list] = {}
    for rank in range(WORLD):
        for key, err in json.loads((out_dir / f"rank{rank}.json").read_text()).items():
            merged.setdefault(key, []).append(err)
    return merged


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_one_step_equals_a_single_process_run_on_the_whole_batch(results, method, mode):
    errors = results.get(f"{mode}:{method}")
    assert errors is not None and len(errors) == WORLD, "the case did not run on every rank"
    if all(e is not None and e.startswith("skip:") for e in errors):
        pytest.skip(errors[0][len("skip: "):])
    failed = [f"rank {r}:\n{e}" for r, e in enumerate(errors) if e is not None]
    assert not failed, "\n".join(failed)
