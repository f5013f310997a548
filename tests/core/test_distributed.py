"""Data-parallel training (core.distributed + core.training.fit) gives the update of one
process: checked on CPU with two gloo processes, and through torchrun end to end."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from advlab.core import distributed, models, training

from ..conftest import ROOT


def _toy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    return x, y


def _train(world: int, rank: int, tmp: str, batch_size: int):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                                world_size=world)
    torch.manual_seed(0)
    model = models.create_model("small_cnn", 10, 1, width=8)
    cfg = training.TrainConfig(epochs=2, batch_size=batch_size, lr=0.05, seed=0)
    res = training.fit(model, _toy(), training.Method("standard"), cfg, progress=False)
    torch.save({"state": model.state_dict(), "loss": res.history[-1]["train_loss"]},
               f"{tmp}/rank{rank}_of{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def _spawned(rank: int, world: int, tmp: str, batch_size: int):
    _train(world, rank, tmp, batch_size)


@pytest.mark.parametrize("batch_size", [32, 25])  # 25: unequal shares (13 + 12)
def test_two_processes_make_the_same_update_as_one(tmp_path, batch_size):
    _train(1, 0, str(tmp_path), batch_size)
    mp.spawn(_spawned, args=(2, str(tmp_path), batch_size), nprocs=2, join=True)
    one = torch.load(tmp_path / "rank0_of1.pt")
    r0, r1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    for k, v in one["state"].items():
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks disagree on {k}"
        assert torch.allclose(r0["state"][k], v, atol=1e-5, rtol=1e-4), \
            f"{k}: 2-process DDP differs from 1 process by {(r0['state'][k] - v).abs().max()}"
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5)  # the logged loss is global


def test_shard_takes_every_world_th_example():
    x, y = torch.arange(10.0), torch.arange(10)
    assert not distributed.active()
    sx, sy = distributed.shard(x, y)
    assert torch.equal(sx, x) and distributed.world_size() == 1 and distributed.rank() == 0


@pytest.mark.skipif(not (ROOT / "data" / "fashion_mnist").exists(), reason="data/ missing")
def test_torchrun_trains_and_rank0_writes_one_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "lib")}
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m",
                        "advlab", "train", "--method", "pgd_at", "--steps", "2",
                        "--n-train-per-class", "6", "--epochs", "1", "--batch-size", "20",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "with 2 process(es)" in r.stderr
    blob = training.load_checkpoint(out)
    assert blob["meta"]["epoch"] == 1 and blob["meta"]["arch"] == "small_cnn"
