"""Data-parallel training under torchrun: samplers, gathers, and 2 processes == 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pneumonia_cam.extensions import feature_cache
from pneumonia_cam.steps import data
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support import distributed
from pneumonia_cam.support.checkpoint import load_checkpoint


# --------------------------------------------------------------------------------------------------
# Pure helpers (no process group)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (0, 2), (8, 2), (7, 1)])
def test_shards_are_contiguous_and_cover_every_index_once(n, world):
    shards = [distributed.shard_indices(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # rank order == split order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [list(distributed.ShardSampler(n, r, world)) for r in range(world)] == [list(s) for s in shards]


def test_sharded_sampler_with_one_process_is_the_plain_shuffle():
    data = list(range(13))
    plain = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    sampler = distributed.ShardedRandomSampler(data, torch.Generator().manual_seed(5), num_replicas=1, rank=0)
    ours = DataLoader(data, batch_size=4, sampler=sampler, generator=sampler.generator)
    for _ in range(3):  # three epochs: the generator advances identically
        assert [b.tolist() for b in ours] == [b.tolist() for b in plain]
    assert torch.equal(sampler.generator.get_state(), plain.generator.get_state())


def test_ranks_batches_together_are_the_single_process_global_batches():
    data, world, b = list(range(16)), 2, 4
    plain = DataLoader(data, batch_size=b * world, shuffle=True, generator=torch.Generator().manual_seed(3))
    ranks = []
    for r in range(world):
        s = distributed.ShardedRandomSampler(data, torch.Generator().manual_seed(3), num_replicas=world, rank=r)
        ranks.append(DataLoader(data, batch_size=b, sampler=s, generator=s.generator))
    for _ in range(2):
        per_rank = [[x.tolist() for x in loader] for loader in ranks]
        merged = [sorted(sum(parts, [])) for parts in zip(*per_rank)]
        assert merged == [sorted(x.tolist()) for x in plain]


def test_uneven_split_is_padded_so_every_rank_takes_the_same_number_of_steps():
    data = list(range(5))
    lens = [len(list(distributed.ShardedRandomSampler(data, torch.Generator().manual_seed(0), 2, r)))
            for r in range(2)]
    assert lens == [3, 3]


def test_global_batch_must_divide_by_the_world_size():
    assert distributed.per_process_batch(8, 2) == 4
    with pytest.raises(ValueError, match="divisible"):
        distributed.per_process_batch(6, 4)


def test_without_torchrun_everything_is_a_single_process_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.init("cpu") == torch.device("cpu") and not dist.is_initialized()
    t = torch.arange(3)
    assert distributed.all_gather(t) is t and distributed.sum_across([1.5, 2]) == [1.5, 2.0]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model


# --------------------------------------------------------------------------------------------------
# Gathers across 2 real gloo processes
# --------------------------------------------------------------------------------------------------
_GATHER_SCRIPT = """
import sys, torch, torch.distributed as dist
from pneumonia_cam.support import distributed
distributed.init("cpu")
rank = distributed.rank()
x = torch.arange(3 * (rank + 1), dtype=torch.float64).reshape(-1, 3) + 100 * rank  # (r+1, 3)
gathered = distributed.all_gather(x)
empty = distributed.all_gather(torch.zeros((0 if rank else 2, 2)))  # one rank has nothing
sums = distributed.sum_across([0.1 * (rank + 1), rank])
agree = distributed.all_agree(rank == 0), distributed.all_agree(True)
bn = torch.nn.BatchNorm1d(2)
bn.running_mean.fill_(rank + 1.0)
distributed.broadcast_buffers(bn)
# the feature cache: each rank extracts half of every split, all ranks get all features
from pneumonia_cam.steps import data
from pneumonia_cam.extensions import feature_cache
from pneumonia_cam.steps.model import build_model
torch.manual_seed(0)
model = build_model("resnet18", "none", freeze_backbone=True)
sets = data.make_datasets(sys.argv[2], size=32, augment=False)
seen, extract = [], feature_cache.extract_features
feature_cache.extract_features = lambda m, loader, **kw: seen.append(len(loader.sampler)) or extract(m, loader, **kw)
feats = feature_cache.cache_features(model, sets, batch_size=3, device="cpu", precision="fp32", cache_dir=sys.argv[3])
again = feature_cache.cache_features(model, sets, batch_size=3, device="cpu", precision="fp32", cache_dir=sys.argv[3])
assert all(torch.equal(feats[k].tensors[0], again[k].tensors[0]) for k in feats)
torch.save({"gathered": gathered, "empty": tuple(empty.shape), "sums": sums, "agree": agree,
            "bn": bn.running_mean.clone(), "world": distributed.world_size(),
            "features": {k: v.tensors for k, v in feats.items()}, "seen": seen}, f"{sys.argv[1]}.{rank}")
distributed.cleanup()
"""


def _torchrun(nproc: int, args: list[str], cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, *args], env=env, capture_output=True, text=True, timeout=240)


def test_gathers_and_sharded_feature_extraction_across_two_processes(tmp_path, tiny_kaggle_root):
    script = tmp_path / "gather.py"
    script.write_text(_GATHER_SCRIPT)
    done = _torchrun(2, [str(script), str(tmp_path / "out"), str(tiny_kaggle_root), str(tmp_path / "cache")])
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"out.{r}", weights_only=True) for r in (0, 1))
    expected = torch.cat([torch.arange(3.0).reshape(1, 3), torch.arange(6.0).reshape(2, 3) + 100]).double()
    for r in (r0, r1):
        assert r["world"] == 2
        assert torch.equal(r["gathered"], expected)  # rank order, trimmed back from the padding
        assert tuple(r["empty"]) == (2, 2)
        assert r["sums"] == [0.1 + 0.2, 1.0]
        assert tuple(r["agree"]) == (False, True)
        assert torch.equal(r["bn"], torch.ones(2))  # rank 0's running statistics everywhere

    # Each rank ran the backbone over half of each split (train 16, val 8, test 8), once: the second
    # call found the files rank 0 wrote.
    assert r0["seen"] == r1["seen"] == [8, 4, 4]
    # Sharded extraction == one process over the whole split, in the split's order.
    torch.manual_seed(0)
    model = build_model("resnet18", "none", freeze_backbone=True)
    sets = data.make_datasets(tiny_kaggle_root, size=32, augment=False)
    alone = feature_cache.cache_features(model, sets, batch_size=3, device="cpu", precision="fp32")
    for split, ds in alone.items():
        f, y = ds.tensors
        for r in (r0, r1):
            assert torch.equal(r["features"][split][1], y)
            assert torch.allclose(r["features"][split][0], f, rtol=0, atol=1e-5), split
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 3  # one file per split, by rank 0
    assert not list((tmp_path / "cache").glob(".*.tmp"))


# --------------------------------------------------------------------------------------------------
# torchrun: 2 processes == 1 process with the same global batch
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_gloo_processes_train_the_same_head_as_one_process(tiny_kaggle_root, tmp_path):
    """Frozen backbone (BatchNorm in eval mode), no augmentation, fp32, global batch 8 = 2 x 4.

    The 2-process run is interrupted after epoch 1 and resumed, so the comparison covers --resume too;
    a second 2-process run trains on cached features (equal to the image path to 1e-5, test_features.py).

    Then the only differences are the ones data parallelism introduces on purpose: each process
    computes half of every batch, DDP averages the two half-batch gradients, and validation/test
    predictions are gathered from two shards.
    """
    common = ["--data-dir", str(tiny_kaggle_root), "--out-dir", str(tmp_path / "runs"), "--image-size", "32",
              "--epochs", "2", "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--device", "cpu",
              "--freeze-backbone", "--no-augment", "--no-channels-last", "--lr", "0.01", "--no-progress"]
    # 2 epochs in one process; 1 epoch in two processes, then --resume (every rank reads last.pt) to 2;
    # and 2 processes with the feature cache (sharded extraction, the head trained under DDP).
    invocations = {"p1": (1, []), "p2": (2, ["--epochs", "1"]), "p2-resume": (2, ["--resume"]),
                   "p2-cached": (2, ["--cache-features"])}
    for name, (nproc, extra) in invocations.items():
        done = _torchrun(nproc, ["-m", "pneumonia_cam.train", *common, "--name", name.removesuffix("-resume"),
                                 *extra], tmp_path / "cache")
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("best epoch") == 1  # only rank 0 prints the summary
    runs = {name: tmp_path / "runs" / name for name in ("p1", "p2", "p2-cached")}

    m1 = json.loads((runs["p1"] / "metrics.json").read_text())
    w1 = load_checkpoint(runs["p1"] / "last.pt")["model"]
    assert m1["machine"]["world_size"] == 1
    assert m1["history"][0]["train_loss"] != m1["history"][1]["train_loss"]  # it did train
    for name in ("p2", "p2-cached"):
        m2 = json.loads((runs[name] / "metrics.json").read_text())
        assert m2["machine"]["world_size"] == 2
        assert m2["best_epoch"] == m1["best_epoch"]
        for split in ("val", "test"):
            assert m2[split]["n"] == m1[split]["n"] == 8  # every image once, none padded twice
            for k in ("accuracy", "auc", "loss", "sensitivity", "specificity"):
                assert m2[split][k] == pytest.approx(m1[split][k], abs=1e-5, nan_ok=True), (name, split, k)
        for h1, h2 in zip(m1["history"], m2["history"], strict=True):
            for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert h2[k] == pytest.approx(h1[k], abs=1e-5), (name, k)
        w2 = load_checkpoint(runs[name] / "last.pt")["model"]
        for k in ("fc.0.weight", "fc.0.bias"):
            assert (w2[k] - w1[k]).abs().max() <= 1e-5, (name, k)
