"""Lesson 03 from Python (a notebook or a script): load a trained run, CAM one X-ray, draw it.

In a notebook, import the function and draw on your own axes::

    import matplotlib.pyplot as plt
    from from_python import draw_cam       # or paste the function into a cell
    fig, ax = plt.subplots(figsize=(5, 5))
    draw_cam("runs/demo/best.pt", "scan.png", ax)

As a script it writes the figure to a file::

    python lessons/03_cam/from_python.py runs/demo/best.pt scan.png cam.png

``tests/test_from_python.py`` runs this file as a script on a tiny checkpoint.
"""

import sys

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumonia_cam import CLASSES
from pneumonia_cam.extensions.map_model import load_model
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.overlay import show_cam_on_image
from pneumonia_cam.steps.weighted_sum import cam_from_model
from pneumonia_cam.support.images import load_image


def draw_cam(checkpoint: str, image_path: str, ax) -> tuple[str, float]:
    """Draw the CAM of the predicted class over one X-ray on ``ax``; return (class, probability)."""
    model, payload = load_model(checkpoint)  # the run's architecture and weights, eval mode, CPU
    size = payload["config"]["image_size"]  # the input size the run was trained at
    x = make_transforms(size)["test"](load_image(image_path))  # (3, size, size): the evaluation transform
    with torch.no_grad():
        cams, log_probs = cam_from_model(model, x[None])  # (1, h, w) map of the predicted class, (1, C)
    c = int(log_probs[0].argmax())
    p = float(log_probs[0, c].exp())
    show_cam_on_image(ax, x, cams[0], title=f"{CLASSES[c]} p={p:.2f}")  # gray X-ray, jet map upsampled
    return CLASSES[c], p


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python lessons/03_cam/from_python.py CHECKPOINT IMAGE OUT.png")
    checkpoint, image_path, out = sys.argv[1:]
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)  # no display needed; in a notebook use plt.subplots() instead
    predicted, p = draw_cam(checkpoint, image_path, fig.add_subplot())
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"{predicted} {p:.4f} {out}")
