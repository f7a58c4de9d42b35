"""Lesson 01, write it yourself: global average pooling and the size of the head it allows.

Fill in each function below, then let the lesson's own tests judge your code:

    python -m pneumonia_cam.exercises start 01_gap     # copies this file to my_exercises/01_gap.py
    pytest lessons/01_gap --student my_exercises       # the lesson's tests, with your functions

Each failing test names the exercise and repeats its hint; when every exercise passes, pytest says
so in one line. Read lessons/01_gap/README.md first. The answers are in pneumonia_cam/steps/gap.py:
try without it.
"""

from __future__ import annotations

import torch

LESSON = "01_gap"  # tells `pytest --student` which lesson this file answers


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """Average every channel over its spatial grid: $F_k = \\frac{1}{hw} \\sum_{x,y} A_k(x, y)$.

    Args:
        x: feature maps of shape (B, K, h, w).

    Returns:
        Tensor of shape (B, K): one mean per image and channel.

    Raises:
        ValueError: if ``x`` is not 4-D; the message names the expected shape "(B, K, h, w)".

    Hint: The grid is the last two axes, dims 2 and 3; average over both at once, keep B and K.
    """
    raise NotImplementedError("exercise global_average_pool: see lessons/01_gap/README.md, "
                              "'From feature maps to class scores'")


def dense_head_params(channels: int, height: int, width: int, num_classes: int = 2) -> int:
    """Parameters of a linear layer on the *flattened* feature map: $C \\cdot K h w + C$.

    Args:
        channels: K, feature channels (2048 for ResNet-50/101/152).
        height: h of the feature grid (7 at 224 px).
        width: w of the feature grid.
        num_classes: C.

    Returns:
        The number of weights plus biases.

    Hint: A Linear(n_in, n_out) holds an n_out x n_in weight matrix and n_out biases; here n_in = K h w.
    """
    raise NotImplementedError("exercise dense_head_params: see lessons/01_gap/README.md, "
                              "'Why average instead of flatten'")


def gap_head_params(channels: int, num_classes: int = 2) -> int:
    """Parameters of GAP followed by a linear layer: $C \\cdot K + C$ (GAP itself has none).

    Args:
        channels: K.
        num_classes: C.

    Returns:
        The number of weights plus biases (4,098 for ResNet-152 and two classes).

    Hint: The pool has no parameters, so only the Linear(K, C) counts: do not forget its C biases.
    """
    raise NotImplementedError("exercise gap_head_params: see lessons/01_gap/README.md, "
                              "'Why average instead of flatten'")
