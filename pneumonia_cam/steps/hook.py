"""Step 1 of the CAM section: catch the last convolutional block's output with a forward hook.

Tutorial section: *Class Activation Maps* — "we register a forward hook on ``layer4``".

A Class Activation Map (Zhou et al., "Learning Deep Features for Discriminative Localization",
CVPR 2016) needs two things the forward pass computes but does not return:

$$
M_c(x, y) = \\sum_k w^c_k \\, A_k(x, y)
$$

where $A_k(x, y)$ is channel $k$ of the last convolutional block's output at cell $(x, y)$ (here
ResNet's ``layer4``: $K = 512$ channels for ResNet-18/34, $2048$ for ResNet-50/101/152, on a $7
\\times 7$ grid for a 224-pixel input) and $w^c_k$ is the head's weight from channel $k$ to class $c$
(``model.fc[0].weight``). The weights are parameters we can read at any time; the feature maps
exist only during the forward pass. A *forward hook* is PyTorch's way to see them: a function that
``nn.Module.__call__`` runs right after ``module.forward`` with ``(module, inputs, output)``.

The article's ``LayerActivations`` got the idea right and the bookkeeping wrong: ``features = []``
was a *class* attribute, so every instance shared one list and every forward pass appended to it;
``acts.features[0]`` then returns the first image ever seen, not the current one. The lesson tests
(``lessons/03_cam/test_hook.py``) reproduce that bug. Here storage is per instance, replaced (not
appended) on every forward pass, and the handle is removed when the ``with`` block ends.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class LayerActivations:
    """Record the output of ``layer`` on every forward pass, as a context manager.

    Example:
        >>> with LayerActivations(model.layer4) as acts:
        ...     log_probs = model(x)           # (B, 3, 224, 224) -> (B, 2)
        >>> acts.features.shape                # (B, K, 7, 7), detached
        >>> len(model.layer4._forward_hooks)   # 0: the hook is gone

    The hook is registered in ``__init__`` (as in the article, so ``acts.remove()`` works without
    ``with`` too) and removed by ``remove()`` / at the end of the ``with`` block. Entering an
    instance whose hook was removed registers it again; there is never more than one handle.

    Args:
        layer: the module whose output to keep, e.g. ``model.layer4``.
        keep_graph: also keep the *non-detached* output in ``self.output`` so that a gradient can be
            taken with respect to it (Grad-CAM). If that output does not require grad (every
            parameter frozen and the input a plain tensor), the hook switches ``requires_grad`` on
            for it, which makes autograd record the rest of the forward pass from this tensor on.
            This needs grad mode on (``torch.enable_grad()``), and nothing after ``layer`` may
            modify the output in place (true for ResNet: ``avgpool`` is out of place).

    Attributes:
        features: the last output, ``.detach()``-ed: ``(B, K, h, w)``; ``None`` before any pass.
        output: the last output still attached to the graph (only with ``keep_graph=True``).
    """

    def __init__(self, layer: nn.Module, keep_graph: bool = False) -> None:
        self.layer = layer
        self.keep_graph = keep_graph
        # Per-instance state (the article's bug was a class-level ``features = []``).
        self.features: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._handle: RemovableHandle | None = None
        self._register()

    def _register(self) -> None:
        if self._handle is None:
            self._handle = self.layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Replace, never append: one forward pass -> one stored tensor.
        self.features = output.detach()  # (B, K, h, w), no graph kept alive
        if self.keep_graph:
            if torch.is_grad_enabled() and not output.requires_grad:
                # Frozen model: nothing upstream needs a gradient, so autograd recorded nothing.
                # The output is then a graph-less tensor (a leaf) and may be made to require grad;
                # everything computed from it afterwards (pool, head) is recorded.
                output.requires_grad_(True)
            self.output = output

    def remove(self) -> None:
        """Unregister the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "LayerActivations":
        self._register()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
