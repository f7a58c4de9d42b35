"""``lessons/03_cam/from_python.py``, the "From Python" code shown on the lesson 03 page, run on a tiny
checkpoint (a random ResNet-18 saved the way ``train`` saves one; no training) and a phantom X-ray."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pneumonia_cam import CLASSES
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.checkpoint import save_checkpoint
from pneumonia_cam.support.images import load_image
from pneumonia_cam.support.phantoms import render_phantom

EXAMPLE = Path(__file__).resolve().parents[1] / "lessons" / "03_cam" / "from_python.py"
SIZE = 64  # the checkpoint's image_size: small, so the test takes about a second


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """A ``best.pt`` as ``train`` writes it (random ResNet-18, seed 0) and a 256 px PNEUMONIA phantom."""
    root = tmp_path_factory.mktemp("from_python")
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none").eval()
    checkpoint = root / "best.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "classes": list(CLASSES), "metrics": {},
                                 "config": {"arch": "resnet18", "image_size": SIZE, "dilate_layer4": False}})
    phantom = render_phantom(np.random.default_rng(0), 256, pneumonia=True)
    image = root / "scan.png"
    Image.fromarray(phantom.image).save(image)
    return checkpoint, image, model


def reference(model, image_path):
    """The CAM by its definition, without the package's hook or weighted sum: layer4 features by
    running the ResNet's layers in order, then $M_c = \\sum_k w^c_k f_k$ for the predicted class c."""
    x = make_transforms(SIZE)["test"](load_image(image_path))[None]  # (1, 3, 64, 64)
    with torch.no_grad():
        f = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        f = model.layer4(model.layer3(model.layer2(model.layer1(f))))  # (1, 512, 2, 2)
        p = model(x).exp()[0]  # (2,)
        c = int(p.argmax())
        cam = torch.einsum("k,khw->hw", model.fc[0].weight[c], f[0]).double()  # (2, 2)
    cam = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    cam = cam.clamp(min=0)
    cam = (cam - cam.min()) / (cam.max() - cam.min())  # ReLU, then min-max: what the overlay shows
    return CLASSES[c], float(p[c]), cam.numpy()


def test_example_as_a_script_writes_the_figure_and_prints_the_prediction(run_files, tmp_path, capsys, monkeypatch):
    checkpoint, image, model = run_files
    out = tmp_path / "cam.png"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(checkpoint), str(image), str(out)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    predicted, p, written = capsys.readouterr().out.split()
    want_class, want_p, _ = reference(model, image)
    assert predicted == want_class and float(p) == pytest.approx(want_p, abs=1e-4)
    assert written == str(out) and Image.open(out).size[0] > 100  # a real PNG, not an empty file


def test_drawn_map_is_the_cam_of_the_predicted_class(run_files):
    """On a notebook's axes: the gray X-ray first, then the map, which must be the normalized CAM."""
    checkpoint, image, model = run_files
    draw_cam = runpy.run_path(str(EXAMPLE))["draw_cam"]  # imported, not run as __main__
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    predicted, p = draw_cam(str(checkpoint), str(image), ax)
    want_class, want_p, want_map = reference(model, image)
    assert (predicted, p) == (want_class, pytest.approx(want_p, abs=1e-6))
    gray, heat = ax.images
    assert gray.get_cmap().name == "gray" and heat.get_cmap().name == "jet"
    np.testing.assert_allclose(np.asarray(heat.get_array()), want_map, atol=1e-6)
