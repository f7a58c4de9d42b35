r"""Model changes made for localization: a head that pools the class map, and a dilated ``layer4``.

The article's model (:mod:`pneumonia_cam.steps.model`) pools the *features* with a global average and
then applies the linear head; its CAM is exact because both are linear. Two changes, taught in lesson
04, make the map sharper or finer without giving up that exactness:

* :class:`ClassMapPool` computes the class map on every cell first and then pools the *map*, by its
  mean (the article's head, to rounding), a log-sum-exp or a top-k mean (:func:`pool_cells`), so that a
  few strong cells can decide the logit. :func:`pool_class_map_` switches a built model to it.
* :func:`dilate_layer4_` removes ``layer4``'s stride: the same weights give a 14x14 grid at 224 px
  instead of 7x7.

:func:`build_map_model` builds the article's model with these options, as ``python -m
pneumonia_cam.train`` does (``--pooling``, ``--dilate-layer4``), and :func:`load_model` rebuilds any
model a run saved, whichever options it was trained with.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from pneumonia_cam.steps.model import ARCHS, build_model
from pneumonia_cam.support.checkpoint import CheckpointError, load_checkpoint

#: How the head pools over the grid's cells: the article's mean (GAP), log-sum-exp, or the top-k mean.
POOLINGS: tuple[str, ...] = ("mean", "lse", "topk")


def build_map_model(
    arch: str = "resnet18",
    weights: str | os.PathLike = "none",
    freeze_backbone: bool = False,
    num_classes: int = 2,
    dilate_layer4: bool = False,
    offline: bool = False,
    progress: bool = True,
    pooling: str = "mean",
    lse_r: float = 10.0,
    topk_fraction: float = 0.1,
) -> nn.Module:
    """The article's model (:func:`pneumonia_cam.steps.model.build_model`) with the localization options.

    With the defaults (``pooling="mean"``, no dilation) it is exactly the article's model.

    Args:
        arch: one of :data:`pneumonia_cam.steps.model.ARCHS`.
        weights: ``"imagenet"``, ``"none"`` or a state-dict file, as for ``build_model``.
        freeze_backbone: train the head only (the article).
        num_classes: C.
        dilate_layer4: remove the stride of ``layer4`` and dilate its later 3x3 convolutions, so the
            CAM grid is 14x14 instead of 7x7 at 224 px with the same weights (:func:`dilate_layer4_`).
        offline: never download.
        progress: show the download's progress bar on stderr.
        pooling: ``"mean"`` (the article's GAP + linear head), ``"lse"`` or ``"topk"`` (pool the
            class map, :class:`ClassMapPool`; ``model.avgpool`` becomes ``nn.Identity``).
        lse_r: the sharpness $r > 0$ of ``pooling="lse"``.
        topk_fraction: the share of cells, in (0, 1], that ``pooling="topk"`` averages.

    Returns:
        The model, in train mode, on the CPU. ``model.fc[0]`` holds the head's weight (C, K) and bias
            (C,) (an ``nn.Linear``, or a :class:`ClassMapPool`), ``model.fc[1]`` is the ``LogSoftmax``.

    Raises:
        WeightsUnavailableError: as for ``build_model``.
        ValueError: unknown ``arch``, or a bad ``pooling``, ``lse_r`` or ``topk_fraction``.
    """
    check_pooling(pooling, lse_r, topk_fraction)  # before any file is read or downloaded
    model = build_model(arch, weights, freeze_backbone, num_classes, offline=offline, progress=progress)
    if pooling != "mean":
        pool_class_map_(model, pooling, lse_r, topk_fraction)
    if dilate_layer4:
        dilate_layer4_(model)
    return model


def check_pooling(pooling: str, lse_r: float = 10.0, topk_fraction: float = 0.1) -> None:
    """Raise a one-line ``ValueError`` unless the pooling settings are usable.

    Args:
        pooling: one of :data:`POOLINGS`.
        lse_r: log-sum-exp sharpness; must be finite and > 0.
        topk_fraction: top-k share of the cells; must be in (0, 1].

    Raises:
        ValueError: an unknown ``pooling``, or a parameter out of its range.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if not (math.isfinite(lse_r) and lse_r > 0):
        raise ValueError(f"lse_r must be a finite number > 0 (about 10 is usual), got {lse_r}")
    if not 0 < topk_fraction <= 1:  # also False for NaN
        raise ValueError(f"topk_fraction must be in (0, 1] (1 = the mean, 1/cells = the max), got {topk_fraction}")


def topk_count(fraction: float, cells: int) -> int:
    r"""How many cells the top-k mean keeps: $k = \max(1, \lceil f \, n \rceil)$.

    Rounded to 9 decimals before the ceiling, so that a product such as $0.28 \times 25$, which is
    7.000000000000001 in floating point, keeps 7 cells, not 8.

    Args:
        fraction: $f \in (0, 1]$, the share of cells.
        cells: $n = hw$, the number of cells of the grid.

    Returns:
        $k$, between 1 and ``cells``.
    """
    return min(cells, max(1, math.ceil(round(fraction * cells, 9))))


def pool_cells(maps: torch.Tensor, pooling: str = "mean", lse_r: float = 10.0,
               topk_fraction: float = 0.1) -> torch.Tensor:
    r"""Pool maps over their cells: the mean, the log-sum-exp, or the mean of the top-k cells.

    With $S(x, y)$ a map on $n = hw$ cells,

    $$
    \begin{aligned}
    \operatorname{mean}(S) &= \frac{1}{n}\sum_{x,y} S(x, y), \\
    \operatorname{lse}_r(S) &= \frac{1}{r}\log\Big(\frac{1}{n}\sum_{x,y} e^{r S(x, y)}\Big), \\
    \operatorname{top}_k(S) &= \frac{1}{k}\sum_{i=1}^{k} S_{(i)},
    \end{aligned}
    $$

    where $S_{(1)} \ge S_{(2)} \ge \dots$ are the cells sorted by value and $k$ is
    :func:`topk_count`. $\operatorname{lse}_r$ goes from the mean ($r \to 0$) to the maximum
    ($r \to \infty$); $\operatorname{top}_k$ from the maximum ($k = 1$) to the mean ($k = n$). All
    three commute with adding a constant: $\operatorname{pool}(S + b) = \operatorname{pool}(S) + b$.

    Args:
        maps: ``(..., n)`` values on the flattened grid (e.g. ``(B, C, h*w)``).
        pooling: one of :data:`POOLINGS`.
        lse_r: $r$, the sharpness of ``"lse"``.
        topk_fraction: the share of cells that ``"topk"`` keeps.

    Returns:
        ``(...)`` pooled values, in ``maps``' dtype.
    """
    n = maps.shape[-1]
    if pooling == "mean":
        return maps.mean(-1)  # (..., n) -> (...)
    if pooling == "lse":
        # logsumexp subtracts the maximum before exponentiating: e^{r S} itself overflows float64
        # once r S > 709 (r = 10 and a logit of 71 suffice).
        return (torch.logsumexp(lse_r * maps, -1) - math.log(n)) / lse_r  # (..., n) -> (...)
    if pooling == "topk":
        return maps.topk(topk_count(topk_fraction, n), -1).values.mean(-1)  # (..., n) -> (..., k) -> (...)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


class ClassMapPool(nn.Module):
    r"""A head that computes the class map on every cell, then pools the map (not the features).

    With $A_k(x, y)$ the output of ``layer4`` on the $h \times w$ grid, $w^c_k$ and $b_c$ this
    module's ``weight`` $(C, K)$ and ``bias`` $(C,)$, the logit of class $c$ is

    $$
    \begin{aligned}
    z_c &= \operatorname{pool}_{x,y}\big(M_c(x, y) + b_c\big) = \operatorname{pool}_{x,y} M_c(x, y) + b_c, \\
    M_c(x, y) &= \sum_k w^c_k A_k(x, y),
    \end{aligned}
    $$

    a $1 \times 1$ convolution followed by one of the poolings of :func:`pool_cells`. $M_c$ is the
    Class Activation Map of Zhou et al. (2016), so the CAM stays exact: the logit *is* the pooled
    CAM plus the bias (the second equality because every pooling here commutes with a constant).
    With ``pooling="mean"`` this is GAP + linear, the article's head, to rounding.

    Why: global average pooling rewards a class for evidence anywhere, so a map spread over the whole
    lung scores as well as one on the lesion (the argument of Preechakul et al. 2020, PYLON, for
    higher-resolution, sharper heads). Log-sum-exp (Wang et al., "ChestX-ray8", CVPR 2017, who found
    $r \approx 10$ best) and the top-k mean let a few strong cells decide the logit. Wang et al.
    apply log-sum-exp to the *features* before the prediction layer; a nonlinear pooling does not
    commute with that layer, so their heatmap is not the logit's decomposition. Pooling the class
    map, as here, keeps it one.

    Shape: the forward takes torchvision's flattened ``(B, K*h*w)`` (``model.avgpool`` set to
    ``nn.Identity``, then ``torch.flatten(x, 1)``) or a ``(B, K, h, w)`` map, and returns ``(B, C)``.

    Args:
        in_features: $K$, the channels of ``layer4``.
        num_classes: $C$.
        pooling: one of :data:`POOLINGS`.
        lse_r: $r$ of ``"lse"``.
        topk_fraction: the share of cells that ``"topk"`` keeps (:func:`topk_count`).

    Raises:
        ValueError: bad pooling settings (:func:`check_pooling`).
    """

    def __init__(self, in_features: int, num_classes: int, pooling: str = "mean", lse_r: float = 10.0,
                 topk_fraction: float = 0.1) -> None:
        super().__init__()
        check_pooling(pooling, lse_r, topk_fraction)
        self.in_features, self.out_features = in_features, num_classes  # K, C, as nn.Linear names them
        self.pooling, self.lse_r, self.topk_fraction = pooling, float(lse_r), float(topk_fraction)
        # nn.Linear's parameter names, shapes and initialization: hook, CAM and Grad-CAM read them alike.
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))  # (C, K)   w^c_k
        self.bias = nn.Parameter(torch.empty(num_classes))  # (C,)     b_c
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear.reset_parameters
        nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear, pooling: str = "mean", lse_r: float = 10.0,
                    topk_fraction: float = 0.1) -> ClassMapPool:
        """A :class:`ClassMapPool` with a copy of ``linear``'s weight and bias (same dtype and device).

        Draws no random numbers, so a model converted with it leaves the random state where the
        article's model would.

        Args:
            linear: an ``nn.Linear(K, C)``.
            pooling: one of :data:`POOLINGS`.
            lse_r: $r$ of ``"lse"``.
            topk_fraction: the share of cells that ``"topk"`` keeps.

        Returns:
            The new head; its parameters require grad.
        """
        with torch.random.fork_rng(devices=[]):  # the throwaway initialization's draws are undone
            head = cls(linear.in_features, linear.out_features, pooling, lse_r, topk_fraction)
        head = head.to(linear.weight)
        with torch.no_grad():
            head.weight.copy_(linear.weight)
            head.bias.copy_(linear.bias)
        return head

    def class_map(self, x: torch.Tensor) -> torch.Tensor:
        """The class maps plus bias, $M_c(x, y) + b_c$, on every cell.

        Args:
            x: ``(B, K, h, w)`` features, or torchvision's flattened ``(B, K*h*w)``.

        Returns:
            ``(B, C, h*w)`` maps on the flattened grid (row-major, as ``flatten`` orders the cells).

        Raises:
            ValueError: ``x`` does not have $K$ channels.
        """
        K = self.in_features
        if x.ndim == 2 and x.shape[1] % K == 0:
            x = x.reshape(x.shape[0], K, -1)  # (B, K*h*w) -> (B, K, h*w): undo torch.flatten(x, 1)
        elif x.ndim == 4 and x.shape[1] == K:
            x = x.flatten(2)  # (B, K, h, w) -> (B, K, h*w)
        else:
            raise ValueError(f"ClassMapPool expects (B, {K}, h, w) or (B, {K}*h*w) input, got {tuple(x.shape)}; "
                             f"set model.avgpool = nn.Identity() so the head sees every cell")
        # The 1x1 convolution: (C, K) @ (B, K, h*w) -> (B, C, h*w), plus b_c in every cell.
        return torch.matmul(self.weight, x) + self.bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The logits $z_c = \operatorname{pool}(M_c + b_c)$.

        Args:
            x: ``(B, K, h, w)`` features, or torchvision's flattened ``(B, K*h*w)``.

        Returns:
            ``(B, C)`` logits (float32 at least, also under bf16 autocast).
        """
        maps = self.class_map(x)  # (B, C, h*w)
        # Under bf16/fp16 autocast the matmul ran in low precision; pool in float32 at least.
        if maps.dtype in (torch.float16, torch.bfloat16):
            maps = maps.float()
        return pool_cells(maps, self.pooling, self.lse_r, self.topk_fraction)  # (B, C, h*w) -> (B, C)

    def extra_repr(self) -> str:
        params = {"mean": "", "lse": f", r={self.lse_r:g}", "topk": f", fraction={self.topk_fraction:g}"}
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"pooling={self.pooling}{params[self.pooling]}"


def pool_class_map_(model: nn.Module, pooling: str, lse_r: float = 10.0,
                    topk_fraction: float = 0.1) -> nn.Module:
    """Switch a model with the article's head to pool the class map instead of the features, in place.

    ``model.avgpool`` becomes ``nn.Identity`` (the head then receives every cell, flattened) and
    ``model.fc[0]`` a :class:`ClassMapPool` holding the same weight and bias, so ``model.layer4``,
    ``model.fc[0].weight`` and ``model.fc[0].bias`` keep their names (and the checkpoint its keys).

    Args:
        model: a torchvision ResNet after :func:`replace_head` (``fc = Sequential(Linear, LogSoftmax)``).
        pooling: one of :data:`POOLINGS`.
        lse_r: $r$ of ``"lse"``.
        topk_fraction: the share of cells that ``"topk"`` keeps.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: ``model.fc[0]`` is not an ``nn.Linear``.
        ValueError: bad pooling settings (:func:`check_pooling`).
    """
    linear = model.fc[0]
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"model.fc[0] must be the article's nn.Linear head, got {type(linear).__name__}")
    model.avgpool = nn.Identity()  # (B, K, h, w) stays a map; torchvision then flattens it to (B, K*h*w)
    model.fc[0] = ClassMapPool.from_linear(linear, pooling, lse_r, topk_fraction)  # (B, K*h*w) -> (B, C)
    return model


def dilate_layer4_(model: nn.Module) -> nn.Module:
    """Make ``layer4`` keep the resolution of ``layer3`` (output stride 16 instead of 32), in place.

    The atrous trick (DeepLab): set the stride-2 convolution of the first block (and its shortcut) to
    stride 1, then give every 3x3 convolution *after* it dilation 2, so each still sees the same
    neighbourhood in image space. Weights keep their shapes, so pretrained weights still load, and the
    CAM grid doubles: 7x7 -> 14x14 at 224 px.

    For Bottleneck ResNets (50/101/152) this is exactly torchvision's
    ``replace_stride_with_dilation=[False, False, True]`` (a test checks it). torchvision refuses
    dilation for the BasicBlock of ResNet-18/34 (``NotImplementedError``), so we do it by hand for
    every block type, the same way.
    """
    first = model.layer4[0]
    if isinstance(first, BasicBlock):
        strided, later_in_first = first.conv1, [first.conv2]  # conv1 carries the stride
    elif isinstance(first, Bottleneck):
        strided, later_in_first = first.conv2, []  # conv2 carries the stride; conv3 is 1x1
    else:  # pragma: no cover - only torchvision ResNets are built here
        raise TypeError(f"cannot dilate layer4 made of {type(first).__name__}")
    if strided.stride == (1, 1):
        raise ValueError("layer4 is already dilated (its first block has stride 1)")
    strided.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)  # the 1x1 shortcut conv must match the main path
    later = later_in_first + [
        m for block in list(model.layer4)[1:] for m in block.modules() if isinstance(m, nn.Conv2d)
    ]
    for conv in later:
        if conv.kernel_size == (3, 3):
            # A 3x3 kernel with dilation 2 spans 5x5; padding 2 keeps the grid size.
            conv.dilation, conv.padding = (2, 2), (2, 2)
    return model


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    arch: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as, load its weights, return it in eval mode.

    The architecture comes from ``payload["config"]`` (``arch``, ``dilate_layer4``, and the head's
    ``pooling``, ``lse_r``, ``topk_fraction``: the state dict alone cannot tell the poolings apart,
    their heads have the same ``fc.0.weight`` and ``fc.0.bias``) and the class count from
    ``payload["classes"]``; the model is built with ``weights="none"`` (nothing is read or downloaded
    besides ``path``).

    Args:
        path: a ``best.pt`` or ``last.pt``.
        map_location: device for the tensors.
        arch: if given, the architecture the caller expects; a different one is an error.
        num_classes: if given, the class count the caller expects.

    Returns:
        ``(model.eval(), payload)``.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the expected architecture/classes.
    """
    payload = load_checkpoint(path, map_location)
    cfg = payload.get("config") or {}
    ck_arch = cfg.get("arch", "resnet18")
    ck_classes = len(payload.get("classes") or ()) or int(payload["model"]["fc.0.bias"].numel())
    if ck_arch not in ARCHS:
        raise CheckpointError(f"checkpoint {path} names unknown arch {ck_arch!r}; expected one of {ARCHS}")
    if (arch is not None and arch != ck_arch) or (num_classes is not None and num_classes != ck_classes):
        raise CheckpointError(
            f"checkpoint {path} holds a {ck_arch} with {ck_classes} classes, but a "
            f"{arch or ck_arch} with {num_classes or ck_classes} classes was expected"
        )
    pooling = {"pooling": cfg.get("pooling", "mean"), "lse_r": float(cfg.get("lse_r", 10.0)),
               "topk_fraction": float(cfg.get("topk_fraction", 0.1))}
    try:
        check_pooling(**pooling)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has a bad head config: {exc}") from None
    model = build_map_model(ck_arch, weights="none", num_classes=ck_classes,
                            dilate_layer4=bool(cfg.get("dilate_layer4", False)), **pooling)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"checkpoint {path} does not fit a {ck_arch} with {ck_classes} classes as its config says "
            f"({detail})"
        ) from None
    return model.to(map_location).eval(), payload
