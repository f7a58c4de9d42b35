r"""The feature cache: the article's frozen-backbone transfer learning, with the backbone run once.

Tutorial section: *Transfer learning* ("freeze all the layers, replace the last one, train it") --
the performance note the article leaves out.

With a frozen backbone the article's model is a fixed feature map followed by a linear model:

$$
\log p(c \mid x) = \operatorname{log\,softmax}_c\big(W F(x) + b\big), \qquad
F(x) = \frac{1}{hw} \sum_{i, j} A(x)_{:, i, j} \in \mathbb{R}^K,
$$

where $A(x)$ is ``model.layer4``'s output ($K \times h \times w$), $W \in \mathbb{R}^{C \times K}$ and
$b \in \mathbb{R}^C$ are ``model.fc[0]``'s weight and bias -- the only trainable numbers (4,098 for
ResNet-152). Every backbone parameter *and* every BatchNorm running statistic is constant
(:func:`pneumonia_cam.steps.model.train_mode` keeps frozen BatchNorm in eval mode), so if the input
pipeline is deterministic, $F(x_i)$ is the same number vector in every epoch. The article recomputes
it anyway: $E$ epochs cost

$$
T_\text{article} \approx E \,(t_\text{fwd,fp32} + t_\text{head}) \cdot N, \qquad
T_\text{cache} \approx t_\text{fwd,bf16} \cdot N + E \, t_\text{head} \cdot N,
$$

and since a ResNet-152 forward is ~11.5 GFLOPs against the head's ~4k multiply-adds,
$t_\text{head} \ll t_\text{fwd}$ and the speed-up grows linearly with the number of epochs:
$T_\text{article} / T_\text{cache} \approx E \cdot t_\text{fwd,fp32} / t_\text{fwd,bf16}$
(``tests/benchmarks/test_bench_recipe.py`` measures it, ``docs/benchmarks.md`` reports it).

**The trade-off: no augmentation.** The article's training transforms rotate and flip at random, so
$F$ of a training image differs from epoch to epoch; a cache of one vector per image cannot hold
that. :func:`cache_features` therefore views the training images through the *evaluation*
transforms (resize + centre crop, no randomness) -- the head then trains on exactly what the
on-the-fly loop sees with ``augment=False``, and ``tests/test_features.py`` shows that both give the
same head weights. It is a difference from the article's recipe, and whether it costs accuracy on
a given data set is an experiment (train both ways and compare validation). The middle ground is ``views=V``: $V$
augmented passes over the training set, extracted once ($V$ forward passes instead of $E$), from
which each epoch draws one view per image at random -- a finite sample of the augmentation
distribution.

How the head is trained: it is ``model.fc`` itself (the same ``nn.Sequential(Linear, LogSoftmax)``
object), handed to the unchanged :func:`pneumonia_cam.steps.fit.fit` with loaders of ``(features, label)``
batches. The trained weights therefore land in ``model``, where the CAM code reads them
(``model.fc[0].weight``); :func:`fit_cached` translates the head's states into whole-model states so
that checkpoints look the same as without the cache.

Extraction runs under ``torch.inference_mode`` (no autograd bookkeeping), in bf16 autocast where
:func:`pneumonia_cam.support.runtime.resolve_precision` finds it supported, and optionally in ``channels_last``
memory format (NHWC, what oneDNN's and cuDNN's fast convolutions prefer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from pneumonia_cam.steps.fit import FitConfig, fit
from pneumonia_cam.support import distributed
from pneumonia_cam.support.checkpoint import atomic_write
from pneumonia_cam.support.runtime import autocast, resolve_device, resolve_precision
from pneumonia_cam.support.splits import with_transform

#: Bump when the cache file layout or the extraction changes meaning: old files are then ignored.
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Extraction: the backbone's pooled output F(x), once per image
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _headless(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace ``model.fc`` by ``nn.Identity`` so that ``model(x)`` returns F(x).

    torchvision's ResNet ends in ``self.fc(torch.flatten(self.avgpool(x), 1))``: with an identity
    head the forward stops exactly at the head's input, (B, K). The original head object is put
    back afterwards (also on error), so ``model.fc`` stays the module the optimizer trains.
    """
    head = model.fc
    model.fc = nn.Identity()
    try:
        yield model
    finally:
        model.fc = head


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's input $F(x)$: everything ``model`` computes before ``model.fc``.

    ``model.fc(backbone_features(model, x))`` equals ``model(x)`` (``tests/test_features.py``).
    Runs in whatever mode, precision and grad mode the caller has set.

    Args:
        model: a classifier whose forward ends in ``self.fc(flatten(pool(...)))`` (torchvision
            ResNets, the models of :func:`pneumonia_cam.steps.model.build_model`).
        x: ``(B, 3, H, W)`` normalized images.

    Returns:
        ``(B, K)`` pooled features.
    """
    with _headless(model):
        return model(x)  # (B, 3, H, W) -> (B, K)


def require_frozen(model: nn.Module) -> None:
    """Raise ``ValueError`` unless every parameter outside ``model.fc`` is frozen.

    A trainable backbone changes $F(x)$ at every optimizer step, so cached features would be stale
    after the first batch.
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    if trainable:
        raise ValueError(
            f"the feature cache needs a frozen backbone, but {len(trainable)} backbone parameters are "
            f"trainable (e.g. {trainable[0]}); use --freeze-backbone, or train without --cache-features"
        )


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen backbone over ``loader`` once and collect $F(x)$ and the labels.

    The model is put in eval mode for the pass (BatchNorm uses its running statistics, exactly as
    :func:`pneumonia_cam.steps.model.train_mode` keeps a frozen backbone during training) and its previous
    mode is restored afterwards. ``channels_last`` converts the model's 4-D weights in place (as
    :func:`pneumonia_cam.steps.fit.fit` does); values are unchanged.

    Args:
        model: the classifier (moved to ``device`` in place).
        loader: yields ``(x (B, 3, H, W), y (B,))`` in a fixed order (no shuffling).
        device: where the forward runs.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see :func:`pneumonia_cam.support.runtime.resolve_precision`).
        channels_last: NHWC layout for model and inputs.
        progress: tqdm bar.
        desc: the bar's label.

    Returns:
        features (torch.Tensor): ``(N, K)`` float32, on the CPU, in loader order.
        labels (torch.Tensor): ``(N,)`` int64, on the CPU, in the same order.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    feats, labels = [], []
    try:
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                f = backbone_features(model, x)  # (B, 3, H, W) -> (B, K), bf16 under autocast
            # Stored in fp32: the head trains in fp32, and bf16 features are exactly representable.
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batch")
    return torch.cat(feats), torch.cat(labels)  # (N, K), (N,)


# --------------------------------------------------------------------------------------------------
# Datasets of cached features
# --------------------------------------------------------------------------------------------------
class AugmentedViews(Dataset):
    """Cached features of ``V`` augmented views per image; each access draws one view at random.

    The draw uses torch's global RNG, which the caller seeds and :func:`pneumonia_cam.steps.fit.fit`
    saves with every epoch, so a run stays repeatable and resumable.

    Args:
        features: ``(V, N, K)``: view ``v`` of image ``i`` is ``features[v, i]``.
        labels: ``(N,)``.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.ndim != 3 or features.shape[1] != labels.shape[0]:
            raise ValueError(f"features must be (V, N, K) with N = len(labels), got {tuple(features.shape)}")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = int(torch.randint(self.features.shape[0], ()))  # one random view of image i
        return self.features[v, i], self.labels[i]  # (K,), ()


def transform_of(dataset: Dataset) -> Callable | None:
    """The ``transform`` a (possibly ``Subset``-wrapped) folder dataset applies."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "transform", None)


def _samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """``(path, label)`` per item, in item order, for folder datasets and Subsets of them."""
    if isinstance(dataset, Subset):
        inner = _samples(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return None if samples is None else [(str(p), int(y)) for p, y in samples]


# --------------------------------------------------------------------------------------------------
# Disk cache: key = what the features depend on
# --------------------------------------------------------------------------------------------------
def cache_key(model: nn.Module, dataset: Dataset, precision: str, channels_last: bool, views: int = 0,
              seed: int = 0) -> str:
    """A SHA-256 over everything the cached features of ``dataset`` depend on.

    That is: the backbone's architecture (its ``repr``: a dilated ``layer4`` has the same weights but
    other features) and every backbone tensor (parameters *and* BatchNorm buffers, ``fc`` excluded:
    the head does not change $F$), the file list with each file's size and modification time (an
    edited or replaced image invalidates the cache), the transform, the precision and layout (they
    change the rounding), and for augmented views their number and seed.

    Raises:
        ValueError: the dataset has no file list (``samples``), so it cannot be keyed.
    """
    samples = _samples(dataset)
    if samples is None:
        raise ValueError(f"a {type(dataset).__name__} has no file list (.samples); it cannot be cached on disk")
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        for p in parts:
            h.update(str(p).encode())
            h.update(b"\0")

    add("pneumonia_cam.extensions.feature_cache", CACHE_VERSION, precision, channels_last, views, seed)
    with _headless(model):
        add(repr(model))  # the architecture without the head
    for name, t in model.state_dict().items():
        if name.startswith("fc."):
            continue
        t = t.detach().cpu().contiguous()
        add(name, t.dtype, tuple(t.shape))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, any dtype
    add(repr(transform_of(dataset)))
    for path, label in samples:
        st = os.stat(path)
        add(path, label, st.st_size, st.st_mtime_ns)
    return h.hexdigest()


def _load_cached(path: Path, key: str) -> dict | None:
    """The cache file's payload if it exists and matches ``key``; ``None`` otherwise."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # data only, never code
    except Exception:  # truncated or foreign file: recompute and overwrite it
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def _save_cached(path: Path, payload: dict) -> None:
    """Write the cache file atomically (:func:`pneumonia_cam.support.checkpoint.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(payload, f))


# --------------------------------------------------------------------------------------------------
# The cache, per split
# --------------------------------------------------------------------------------------------------
def cache_features(
    model: nn.Module,
    datasets: Mapping[str, Dataset],
    *,
    eval_transform: Callable | None = None,
    views: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Dataset]:
    """Compute $F(x)$ once for every image of every split; return datasets of ``(F(x), y)`` pairs.

    Every split is read through ``eval_transform`` (no augmentation, see the module docstring).
    With ``views > 0`` the train split instead gets ``views`` passes through its own (augmenting)
    transform, drawn from a generator seeded with ``seed``, wrapped in :class:`AugmentedViews`.

    Args:
        model: the classifier; its backbone must be frozen (:func:`require_frozen`).
        datasets: ``{"train": ..., "val": ..., ...}`` as from :func:`pneumonia_cam.steps.data.make_datasets`.
        eval_transform: the deterministic pipeline; default: the transform of ``datasets["val"]``
            (the article's evaluation transforms).
        views: 0 = one un-augmented view per image; V > 0 = V augmented views of each train image.
        batch_size: images per extraction batch (inference only, so larger than for training is fine).
        num_workers: DataLoader workers for decoding during extraction.
        device: where the backbone runs.
        precision: ``"auto"`` (bf16 where supported), ``"bf16"`` or ``"fp32"``.
        channels_last: NHWC layout for the extraction.
        cache_dir: if given, features are also stored there, one file per split named by
            :func:`cache_key`, and reused by later runs with the same key.
        seed: seed of the augmented views' randomness.
        progress: tqdm bars.
        log: called with one line per split (computed or loaded, shape, seconds).

    Returns:
        ``{split: TensorDataset(features (N, K), labels (N,))}`` (``AugmentedViews``
            for an augmented train split), features float32 on the CPU.

    Raises:
        ValueError: trainable backbone, ``views < 0``, or no ``eval_transform`` to be found.
    """
    require_frozen(model)
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    if eval_transform is None and "val" in datasets:
        eval_transform = transform_of(datasets["val"])
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    out: dict[str, Dataset] = {}
    for split, ds in datasets.items():
        augmented = split == "train" and views > 0
        if not augmented and eval_transform is None:
            raise ValueError("pass eval_transform, or datasets with a 'val' split to take it from")
        ds = ds if augmented else with_transform(ds, eval_transform)
        n_views = views if augmented else 0
        t0 = time.perf_counter()
        path = key = None
        payload = None
        if cache_dir is not None:
            key = cache_key(model, ds, precision, channels_last, n_views, seed if augmented else 0)
            path = Path(cache_dir) / f"features-{split}-{key[:16]}.pt"
            payload = _load_cached(path, key)
        # torchrun: the extraction below is collective, so every rank must take the same branch.
        if distributed.world_size() > 1 and not distributed.all_agree(payload is not None):
            payload = None
        source = "loaded"
        if payload is None:
            source = "computed"
            # torchrun: each rank extracts a contiguous shard of the split, then all are gathered.
            # (Augmented views stay whole on every rank: their draws follow the single-process order.)
            shard = not augmented and 1 < distributed.world_size() <= len(ds)
            loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                sampler=distributed.ShardSampler(len(ds)) if shard else None,
                                pin_memory=device.type == "cuda")
            kw = dict(device=device, precision=precision, channels_last=channels_last, progress=progress)
            if augmented:
                # fork_rng: the augmentation draws do not shift the caller's RNG stream.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    passes = [extract_features(model, loader, desc=f"{split} view {v + 1}/{views}", **kw)
                              for v in range(views)]
                feats = torch.stack([f for f, _ in passes])  # V x (N, K) -> (V, N, K)
                labels = passes[0][1]
            else:
                feats, labels = extract_features(model, loader, desc=f"{split} features", **kw)
                if shard:
                    feats, labels = distributed.all_gather(feats), distributed.all_gather(labels)  # (N, K), (N,)
            payload = {"key": key, "features": feats, "labels": labels}
            if path is not None and distributed.is_main():
                _save_cached(path, payload)
        feats, labels = payload["features"], payload["labels"]
        out[split] = AugmentedViews(feats, labels) if augmented else TensorDataset(feats, labels)
        if log is not None:
            log(f"features {split}: {source} {tuple(feats.shape)} ({precision}) in "
                f"{time.perf_counter() - t0:.1f}s" + (f" [{path}]" if path is not None else ""))
    return out


def feature_loaders(feature_sets: Mapping[str, Dataset], batch_size: int, seed: int = 0) -> dict[str, DataLoader]:
    """Loaders over cached features, batched exactly like :func:`pneumonia_cam.steps.data.make_loaders`.

    Only ``train`` shuffles, from a generator seeded with ``seed``; with the same dataset length,
    batch size and seed, the image loader and this one draw the same permutation, so both training
    paths see the same images in the same batches. No worker processes: a batch is a slice of a
    tensor in memory.
    """
    return {
        name: DataLoader(ds, batch_size=batch_size, shuffle=name == "train",
                         generator=torch.Generator().manual_seed(seed) if name == "train" else None)
        for name, ds in feature_sets.items()
    }


# --------------------------------------------------------------------------------------------------
# Training the head with the unchanged fit loop
# --------------------------------------------------------------------------------------------------
def fit_cached(
    model: nn.Module,
    loaders: Mapping[str, DataLoader],
    config: FitConfig | None = None,
    *,
    resume: dict | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    **fit_kwargs,
) -> dict:
    """Train ``model.fc`` on cached features with :func:`pneumonia_cam.steps.fit.fit`.

    ``fit`` sees only the head (it returns log-probabilities from (B, K) features) and trains the
    same ``requires_grad`` parameters it would find in the whole frozen model, in the same order,
    so its optimizer state is interchangeable with a run without the cache. The states it produces
    are translated to whole-model states (frozen backbone tensors + head) before ``on_epoch_end``
    sees them and before they are returned: checkpoints look the same with and without the cache,
    and ``resume`` takes such a whole-model state.

    The head always trains in fp32 and without ``channels_last`` (``config.precision`` and
    ``config.channels_last`` are ignored): a (B, K) x (K, C) product has nothing to gain from bf16
    or a 4-D layout, and fp32 keeps the head identical to the on-the-fly loop's in fp32.

    Args:
        model: the classifier whose ``fc`` is trained; it ends up holding the best head.
        loaders: ``{"train", "val"}`` loaders of ``(features, label)`` (:func:`feature_loaders`).
        config: the recipe, as for :func:`pneumonia_cam.steps.fit.fit`.
        resume: a whole-model state from an earlier ``on_epoch_end`` (e.g. ``last.pt``).
        on_epoch_end: receives whole-model states.
        **fit_kwargs: ``log`` and ``progress``, passed to :func:`pneumonia_cam.steps.fit.fit`.

    Returns:
        ``fit``'s final state, with whole-model ``model`` and ``best["model"]`` state dicts.
    """
    require_frozen(model)
    config = dataclasses.replace(config or FitConfig(), precision="fp32", channels_last=False)
    # CPU copies of the frozen tensors, taken once (for ResNet-152, 60 M numbers).
    full_keys = list(model.state_dict())
    frozen = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if not k.startswith("fc.")}

    def to_full(head_state: dict | None) -> dict | None:
        if head_state is None:
            return None
        merged = {**frozen, **{f"fc.{k}": v for k, v in head_state.items()}}
        return {k: merged[k] for k in full_keys}  # the model's own key order

    def to_head(full_state: dict | None) -> dict | None:
        return None if full_state is None else {k[3:]: v for k, v in full_state.items() if k.startswith("fc.")}

    def convert(state: dict, f: Callable) -> dict:
        best = dict(state["best"], model=f(state["best"]["model"]))
        return {**state, "model": f(state["model"]), "best": best}

    state = fit(
        model.fc, loaders, config,
        resume=None if resume is None else convert(resume, to_head),
        on_epoch_end=None if on_epoch_end is None else (lambda s: on_epoch_end(convert(s, to_full))),
        **fit_kwargs,
    )
    return convert(state, to_full)
