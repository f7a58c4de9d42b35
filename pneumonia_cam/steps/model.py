r"""The model: the article's "model architecture" section (transfer learning with a torchvision ResNet).

The article takes an ImageNet-trained ResNet-152, freezes every layer, and swaps the 1000-class
ImageNet head for a two-class one whose output is a log-probability per class:

    model.fc = nn.Sequential(nn.Linear(2048, 2), nn.LogSoftmax(dim=1))

That head is kept exactly, because lesson 03 reads the CAM weights from it by name:
``model.fc[0].weight`` is the $C \times K$ matrix $w^c_k$ and ``model.fc[0].bias`` the $b_c$ of

$$
\log p(c \mid x) = \operatorname{log\,softmax}_c\Big(\sum_k w^c_k F_k + b_c\Big),
\qquad F_k = \frac{1}{hw}\sum_{x,y} A_k(x,y),
$$

with $A_k$ the output of ``model.layer4`` (the hooked layer) and $F_k$ its global average pool
(``model.avgpool``, see :mod:`pneumonia_cam.steps.gap`).

Where we differ from the article, and why:

* ``pretrained=True`` is deprecated in torchvision. The weights it used to load are
  ``ResNet152_Weights.IMAGENET1K_V1`` (for every ResNet, ``IMAGENET1K_V1`` is the old
  ``pretrained=True``). ``.DEFAULT`` would silently pick ``IMAGENET1K_V2`` for ResNet-50/101/152, a
  different, newer training recipe, so we name V1 explicitly.
* ``weights="imagenet"`` gets the file the way torchvision does: from torchvision's cache
  (``$TORCH_HOME/hub/checkpoints/``) when it is there, otherwise downloaded into that cache with a
  progress bar and torchvision's hash check. Offline (``offline=True``, ``--offline`` or
  ``PNEUMONIA_CAM_OFFLINE=1``) a missing file raises :class:`WeightsUnavailableError` (one line: the
  exact file expected, and the alternatives ``--weights none`` / ``--weights PATH``).
* "Frozen" means frozen: ``requires_grad=False`` stops the optimizer, but ``model.train()`` would
  still let every BatchNorm layer update its running mean and variance on each batch. Use
  :func:`train_mode` instead of ``model.train()`` (lesson 02 pins the difference).

Beyond the article, ``pooling="lse"`` or ``"topk"`` pools the *class map* instead of the features
(:class:`ClassMapPool`); ``pooling="mean"``, the default, is the article's head above, unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

#: The architectures the package supports (all torchvision ResNets with a GAP + linear head).
ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: How the head pools over the grid's cells: the article's mean (GAP), log-sum-exp, or the top-k mean.
POOLINGS: tuple[str, ...] = ("mean", "lse", "topk")


#: Any value but "" or "0" forbids downloads, whatever ``offline`` says (set in CI and by the tests).
OFFLINE_ENV = "PNEUMONIA_CAM_OFFLINE"
#: For tests only: a URL on this machine (127.0.0.1) that replaces torchvision's download URL. Its last
#: component names the cached file and must follow torchvision's ``name-<sha256 prefix>.ext``.
URL_ENV = "PNEUMONIA_CAM_WEIGHTS_URL"
#: Seconds a download may wait for the server (to connect, or for the next bytes) before it fails.
DOWNLOAD_TIMEOUT_S = 60.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (missing offline, download failed, wrong file)."""


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """The weights enum that matches the article's deprecated ``pretrained=True``.

    Example: ``imagenet_weights("resnet152") is ResNet152_Weights.IMAGENET1K_V1``.
    """
    _check_arch(arch)
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def expected_weights_file(arch: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``arch``: ``<hub dir>/checkpoints/<file>``.

    The file name is the last component of the enum's download URL (e.g. ``resnet18-f37072fd.pth``;
    of the tests' ``$PNEUMONIA_CAM_WEIGHTS_URL`` when that is set),
    and the hub dir is ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``).
    """
    filename = os.path.basename(urlparse(_imagenet_url(arch)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def downloads_allowed(offline: bool = False) -> bool:
    """False when ``offline`` is True or ``$PNEUMONIA_CAM_OFFLINE`` holds anything but "" or "0"."""
    return not offline and os.environ.get(OFFLINE_ENV, "") in ("", "0")


def build_model(
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
    """Build a torchvision ResNet with the article's log-softmax head.

    Args:
        arch: one of :data:`ARCHS`.
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` file: cached, or downloaded into
            torchvision's cache), ``"none"`` (random init), or a path to a state-dict file: a
            torchvision-format backbone (its ``fc`` keys, whatever their shape, are ignored) or one of
            our ``.pt`` checkpoints (``"model"``).
        freeze_backbone: set ``requires_grad=False`` on everything except the new head (the article).
            Pair it with :func:`train_mode` so BatchNorm statistics stay frozen too.
        num_classes: C, the number of output classes (2: NORMAL, PNEUMONIA).
        dilate_layer4: remove the stride of ``layer4`` and dilate its later 3x3 convolutions, so the
            CAM grid is 14x14 instead of 7x7 at 224 px with the same weights (:func:`dilate_layer4_`).
        offline: never download; a missing ImageNet file is then an error (so is
            ``PNEUMONIA_CAM_OFFLINE=1``, see :func:`downloads_allowed`).
        progress: show the download's progress bar on stderr.
        pooling: ``"mean"`` (the article's GAP + linear head), ``"lse"`` or ``"topk"`` (pool the
            class map, :class:`ClassMapPool`; ``model.avgpool`` becomes ``nn.Identity``).
        lse_r: the sharpness $r > 0$ of ``pooling="lse"``.
        topk_fraction: the share of cells, in (0, 1], that ``pooling="topk"`` averages.

    Returns:
        The model, in train mode, on the CPU. ``model.fc[0]`` holds the head's weight (C, K) and bias
            (C,) (an ``nn.Linear``, or a :class:`ClassMapPool`), ``model.fc[1]`` is the
            ``LogSoftmax``; the forward pass returns log-probabilities of shape (B, C).

    Raises:
        WeightsUnavailableError: weights are missing (offline), their download failed (no connection,
            connection lost, hash mismatch), or they do not fit ``arch``.
        ValueError: unknown ``arch``, or a bad ``pooling``, ``lse_r`` or ``topk_fraction``.
    """
    _check_arch(arch)
    check_pooling(pooling, lse_r, topk_fraction)
    # weights=None: torchvision builds the random-init network and touches no file and no network.
    model = torchvision.models.get_model(arch, weights=None)

    state = _load_backbone_state(arch, weights, offline, progress)
    if state is not None:
        # Backbone only: the ImageNet fc (1000, K) cannot fit our head, and our own head is new.
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = model.load_state_dict(backbone, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            bad = (missing + list(result.unexpected_keys))[:3]
            raise WeightsUnavailableError(
                f"weights {weights} do not fit {arch} ({len(missing)} missing, "
                f"{len(result.unexpected_keys)} unexpected keys, e.g. {bad}); "
                f"pass weights saved from a {arch}, or --weights none"
            )

    replace_head(model, num_classes, freeze_backbone)
    if pooling != "mean":
        pool_class_map_(model, pooling, lse_r, topk_fraction)
    if dilate_layer4:
        dilate_layer4_(model)
    return model


def replace_head(model: nn.Module, num_classes: int = 2, freeze_backbone: bool = False) -> nn.Module:
    """The article's transfer-learning step, in place: freeze the backbone, then swap in a new head.

    ``model.fc = nn.Sequential(nn.Linear(K, C), nn.LogSoftmax(dim=1))``, with $K$ =
    ``model.fc.in_features``. With ``freeze_backbone`` only the head's $C K + C$ parameters train.

    Args:
        model: a torchvision ResNet (its ``fc`` is an ``nn.Linear`` with ``in_features`` = K).
        num_classes: C.
        freeze_backbone: set ``requires_grad=False`` on every parameter that exists before the swap.

    Returns:
        ``model`` itself, with the new head.
    """
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    in_features = model.fc.in_features  # K: 512 (ResNet-18/34) or 2048 (ResNet-50/101/152)
    # New modules default to requires_grad=True, so after freezing only these C*K + C numbers train
    # (4,098 for ResNet-152).
    model.fc = nn.Sequential(
        nn.Linear(in_features, num_classes),  # (B, K) -> (B, C)   the CAM weights w^c_k, b_c
        nn.LogSoftmax(dim=1),  # (B, C) -> (B, C)   log-probabilities, for NLLLoss
    )
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


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that frozen BatchNorm layers stay in eval mode.

    In train mode a BatchNorm layer normalizes with the *batch* statistics and updates its running
    mean/variance buffers: buffers are not parameters, so ``requires_grad=False`` does not protect
    them. A BatchNorm layer whose affine parameters are all frozen is treated as frozen and put back in
    eval mode, so it uses (and keeps) the running statistics it was pretrained with. Works for any
    module (a plain head without BatchNorm simply goes to train mode).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters; 4,098 for a frozen ResNet-152 with the 2-class head."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _imagenet_url(arch: str) -> str:
    """torchvision's download URL for ``arch``'s IMAGENET1K_V1 file, or the tests' local override."""
    url = os.environ.get(URL_ENV)
    if not url:
        return imagenet_weights(arch).url
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise WeightsUnavailableError(f"${URL_ENV}={url}: this override is for tests and must point to "
                                      f"127.0.0.1; unset it to download from torchvision's server")
    return url


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Bound every socket wait of the download (torch.hub's urlopen has no timeout of its own)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _download_imagenet_state(arch: str, path: Path, progress: bool) -> dict:
    """Download ``arch``'s ImageNet file into ``path`` exactly as torchvision does, and load it.

    ``torch.hub.load_state_dict_from_url(check_hash=True)`` is what torchvision's
    ``weights.get_state_dict`` calls: it streams into a ``.partial`` file next to ``path``, checks that
    the SHA-256 of the bytes starts with the hex digits after the last '-' of the file name
    (``resnet18-f37072fd.pth``), and only then renames it to ``path``; on any failure the partial
    file is deleted, so the cache never holds a half-written file.
    """
    url = _imagenet_url(arch)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                                      progress=progress, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, refused, reset, timeout, HTTP error, hash mismatch, unreadable file
        text = str(exc).splitlines()[0][:160] if str(exc) else "no details"
        if isinstance(exc, RuntimeError) and "invalid hash value" in text:
            # A connection closed early ends the stream without an error, so short data lands here too.
            reason = f"the data received is incomplete or corrupted: {text}"
        else:
            reason = f"{type(exc).__name__}: {text}"
    # torch.hub deletes its .partial file on failure; a file at ``path`` arrived whole but does not load.
    kept = f"delete {path}" if path.exists() else "nothing was saved"
    raise WeightsUnavailableError(
        f"downloading the ImageNet weights for {arch} from {url} failed ({reason}); {kept}. "
        f"Run again to retry, put the file at {path} yourself, or use --weights none or --weights PATH"
    ) from None


def _load_backbone_state(arch: str, weights: str | os.PathLike, offline: bool = False,
                         progress: bool = True) -> dict | None:
    """Read the state dict that ``weights`` names; download only for ``"imagenet"`` when allowed."""
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    state = None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        path = expected_weights_file(arch)
        if not path.is_file() and downloads_allowed(offline):
            state = _download_imagenet_state(arch, path, progress)
        elif not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights for {arch} ({imagenet_weights(arch)}) are not cached and downloads are "
                f"off (--offline or ${OFFLINE_ENV}): put the file at {path} (set $TORCH_HOME to use "
                f"another folder), or use --weights none (random init) or --weights PATH (a local state-dict file)"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file {path} does not exist; use --weights imagenet (cached file), "
                f"--weights none, or an existing --weights PATH"
            )
    try:
        # weights_only=True: a weights file is data, and unpickling arbitrary objects could run code.
        state = torch.load(path, map_location="cpu", weights_only=True) if state is None else state
    except Exception as exc:  # truncated, not a torch file, or holds non-tensor objects
        raise WeightsUnavailableError(
            f"cannot read weights file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            f"replace it with a valid state dict, or use --weights none"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our checkpoints (best.pt / last.pt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"weights file {path} does not hold a state dict (name -> tensor); use --weights none"
        )
    return state
