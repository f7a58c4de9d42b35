r"""Data-parallel training under ``torchrun``: process-group plumbing, samplers and gathers.

Not a tutorial section: the article trains in one process. This module lets the same
``python -m pneumonia_cam.train`` run as $W$ cooperating processes (``torchrun --nproc_per_node=W``),
each holding a full copy of the model and a $1/W$ share of every batch. ``DistributedDataParallel``
averages the gradients over the processes, so with $W$ equal shards of $b = B/W$ images each

$$
\frac{1}{W} \sum_{r=1}^{W} \nabla \Big( \frac{1}{b} \sum_{i \in S_r} \ell_i \Big)
= \nabla \Big( \frac{1}{B} \sum_{i=1}^{B} \ell_i \Big),
$$

the gradient of the single-process mean loss over the global batch $B$. Everything here is a no-op
in a plain single process (world size 1): the plain command is unchanged.

What is where:

* **Environment**: :func:`is_distributed` reads torchrun's ``WORLD_SIZE``; :func:`init` starts the
  process group (nccl on CUDA, gloo on CPU) and returns this process's device (``cuda:LOCAL_RANK``).
* **Training order**: :class:`ShardedRandomSampler` is a ``DistributedSampler`` whose epoch
  permutation is drawn exactly as the single-process loader's ``RandomSampler`` draws it (from the
  loader's seeded generator), and rank $r$ takes positions $r, r + W, r + 2W, \dots$: batch $k$ of all
  ranks together is then exactly batch $k$ of the single-process run with batch $B = bW$.
* **Evaluation**: :class:`ShardSampler` gives each rank a contiguous, unpadded slice of a split;
  :func:`all_gather` concatenates the ranks' variable-length results in rank order, which is the
  split's own order, so ROC AUC and every other metric see each image exactly once.
* **Agreement**: :func:`sum_across` and :func:`all_agree` give every rank bit-identical numbers and
  decisions (the same best epoch, the same cache hit or miss).
"""

from __future__ import annotations

import datetime
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from pneumonia_cam.support.runtime import resolve_device


# --------------------------------------------------------------------------------------------------
# Environment and process group
# --------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def is_distributed() -> bool:
    """True when this process is one of several: torchrun's ``WORLD_SIZE > 1``, or an initialized group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return _env_int("WORLD_SIZE", 1) > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _current_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return _current_rank()


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``): the GPU it uses."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0, the process that prints and writes files."""
    return rank() == 0


def init(device: str | torch.device = "auto", backend: str = "auto",
         timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun described in the environment; return this process's device.

    Without ``WORLD_SIZE > 1`` nothing is started and ``device`` is resolved as usual (``"auto"`` ->
    CUDA if available, else CPU). Under torchrun each process takes GPU ``LOCAL_RANK`` when the device
    is CUDA without an index.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        backend: ``"auto"`` (nccl for CUDA, gloo for CPU), ``"nccl"`` or ``"gloo"``.
        timeout_s: how long a collective waits for the other processes.

    Returns:
        The ``torch.device`` this process computes on.
    """
    device = resolve_device(device)
    if not is_distributed():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    return device


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Gathers and agreement
# --------------------------------------------------------------------------------------------------
def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order; the lengths may differ.

    Collectives need equal shapes, so: gather the lengths, pad each tensor to the longest, gather,
    and trim each piece back to its length. Every rank gets the same result, on ``t``'s device.

    Args:
        t: ``(n_r, ...)`` on rank ``r``; the trailing dimensions and dtype must agree.

    Returns:
        ``(sum_r n_r, ...)``; ``t`` itself with world size 1.
    """
    if world_size() == 1:
        return t
    dev = _comm_device()
    x = t.detach().to(dev)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x  # (n_r, ...) -> (max n, ...)
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return torch.cat([p[:s] for p, s in zip(pieces, sizes)]).to(t.device)  # W x (max n, ...) -> (N, ...)


def sum_across(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks in float64, added in rank order: bit-identical on every rank."""
    if world_size() == 1:
        return [float(v) for v in values]
    table = all_gather(torch.tensor([list(values)], dtype=torch.float64))  # (W, len(values))
    out = [0.0] * len(values)
    for row in table.tolist():  # rank order, so every rank rounds the same way
        out = [a + b for a, b in zip(out, row)]
    return out


def all_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (e.g. "my cache file is valid")."""
    return all(v > 0 for v in all_gather(torch.tensor([1 if flag else 0], dtype=torch.int64)).tolist())


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP keeps parameters equal, but in train mode each rank updates its BatchNorm running statistics
    from its own shard; after an epoch the ranks would evaluate and save different models.
    """
    if world_size() == 1:
        return
    dev = _comm_device()
    for b in module.buffers():
        x = b.detach().to(dev)
        dist.broadcast(x, src)
        b.copy_(x)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` with world size > 1; ``model`` itself otherwise.

    Only parameters that require gradients are synchronized (a frozen backbone costs nothing).
    """
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def finish_train_epoch(model: nn.Module, totals: Sequence[float]) -> list[float]:
    """End of a training epoch under torchrun: rank 0's BatchNorm statistics on every process
    (:func:`broadcast_buffers`) and ``totals`` (e.g. loss sum, correct, count) summed over the
    processes (:func:`sum_across`). Alone: ``totals`` unchanged.
    """
    broadcast_buffers(model)
    return sum_across(totals)


def gather_split(loader, y_true: torch.Tensor, probs: torch.Tensor,
                 loss_sum: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The whole split's results from every process's shard, when ``loader`` has a :class:`ShardSampler`.

    Args:
        loader: the loader the results came from.
        y_true: ``(n_r,)`` labels of this process's shard.
        probs: ``(n_r, C)`` probabilities of this process's shard.
        loss_sum: this shard's summed loss.

    Returns:
        y_true (torch.Tensor): ``(N,)`` labels of the whole split, in split order.
        probs (torch.Tensor): ``(N, C)`` probabilities, in the same order.
        loss_sum (float): the summed loss over the whole split.

    For a loader without a :class:`ShardSampler` (one process) the arguments come back unchanged.
    """
    if not isinstance(getattr(loader, "sampler", None), ShardSampler):
        return y_true, probs, loss_sum
    y_true, probs = all_gather(y_true), all_gather(probs)  # (N,), (N, C)
    (total,) = sum_across([loss_sum])
    return y_true, probs, total


# --------------------------------------------------------------------------------------------------
# Batches and samplers
# --------------------------------------------------------------------------------------------------
def per_process_batch(global_batch: int, world: int | None = None) -> int:
    """``--batch-size`` is the global batch $B$; each process loads $B / W$ images.

    Raises:
        ValueError: $B$ is not a multiple of $W$ (the processes' batches would differ in size, and the
            average of their mean losses would not be the global mean).
    """
    world = world_size() if world is None else world
    if global_batch % world:
        raise ValueError(f"--batch-size {global_batch} is the global batch and must be divisible by the "
                         f"{world} processes; use a multiple of {world}")
    return global_batch // world


def shard_indices(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous slice of ``range(n)``: sizes differ by at most one, nothing padded.

    Concatenating the slices in rank order gives ``range(n)`` back, so gathered results are in the
    split's own order.
    """
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class ShardSampler(Sampler[int]):
    """The indices :func:`shard_indices` gives this rank, in order: for evaluation.

    Unlike ``DistributedSampler(shuffle=False)`` it never pads a shard with repeated images, which
    would count them twice in the metrics. :func:`pneumonia_cam.steps.fit.evaluate` gathers the results of
    a loader with this sampler.
    """

    def __init__(self, n: int, rank: int | None = None, world: int | None = None) -> None:
        self.n = n
        self.rank = _current_rank() if rank is None else rank
        self.world = world_size() if world is None else world
        self.indices = shard_indices(n, self.rank, self.world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ShardedRandomSampler(DistributedSampler):
    r"""A ``DistributedSampler`` that shuffles like the single-process loader.

    torch's ``DistributedSampler`` permutes with its own generator seeded ``seed + epoch``, so a
    W-process run would see other batches than the plain run with the same seed. Here the epoch's
    permutation is the one ``RandomSampler(dataset, generator=generator)`` would yield (same draws from
    the same generator, which every rank seeds identically and the fit loop saves in ``last.pt`` for
    ``--resume``). Like ``DistributedSampler`` it pads the permutation with its first entries to a
    multiple of the world size (every rank must run the same number of steps), then rank $r$ takes
    positions $r, r + W, \dots$; with a per-process batch $b$, batch $k$ of all ranks together is
    positions $[kbW, (k+1)bW)$: the single-process batch $k$ of size $bW$. With world size 1 it *is*
    the plain shuffle. ``set_epoch`` is accepted (the usual protocol) but the generator already
    advances from epoch to epoch.
    """

    def __init__(self, dataset, generator: torch.Generator, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        num_replicas = world_size() if num_replicas is None else num_replicas
        rank = _current_rank() if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=False)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        order = list(RandomSampler(self.dataset, generator=self.generator))  # the single-process order
        order += order[: self.total_size - len(order)]  # pad to a multiple of the world size
        return iter(order[self.rank: self.total_size: self.num_replicas])


def shard_loader(loader: DataLoader, train: bool) -> DataLoader:
    """This rank's version of a single-process ``loader``: the same dataset, workers and generator.

    ``train``: per-process batch ``loader.batch_size / W`` (:func:`per_process_batch`), drawn by a
    :class:`ShardedRandomSampler` on the loader's generator (a shuffling loader must have one: all
    ranks need the same permutation). Otherwise: the same batch size over this rank's
    :class:`ShardSampler` slice, whose results :func:`pneumonia_cam.steps.fit.evaluate` gathers. Returns
    ``loader`` itself with world size 1.
    """
    if world_size() == 1:
        return loader
    kw = dict(num_workers=loader.num_workers, pin_memory=loader.pin_memory,
              persistent_workers=loader.persistent_workers, generator=loader.generator)
    ds = loader.dataset
    if train:
        if loader.generator is None:
            raise ValueError("a sharded training loader needs a seeded generator (the same on every rank)")
        return DataLoader(ds, batch_size=per_process_batch(loader.batch_size),
                          sampler=ShardedRandomSampler(ds, loader.generator), **kw)
    return DataLoader(ds, batch_size=loader.batch_size, sampler=ShardSampler(len(ds)), **kw)


def shard_loaders(loaders: dict[str, DataLoader]) -> dict[str, DataLoader]:
    """:func:`shard_loader` for each split; ``"train"`` is the training split."""
    return {name: shard_loader(loader, train=name == "train") for name, loader in loaders.items()}


def set_epoch(loader, epoch: int) -> None:
    """Call ``loader.sampler.set_epoch(epoch)`` when the sampler has it (DistributedSampler protocol)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


__all__ = [
    "is_distributed", "world_size", "rank", "local_rank", "is_main", "init", "cleanup", "barrier",
    "all_gather", "sum_across", "all_agree", "broadcast_buffers", "wrap", "finish_train_epoch", "gather_split",
    "per_process_batch",
    "shard_indices", "ShardSampler", "ShardedRandomSampler", "shard_loader", "shard_loaders", "set_epoch",
]
