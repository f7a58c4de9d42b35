"""``python -m pneumonia_cam.cam`` on Kaggle-like files: large grayscale and RGB JPEGs, a 16-bit PNG,
macOS junk and one broken file."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pneumonia_cam import CLASSES
from pneumonia_cam.cam import main
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.checkpoint import save_checkpoint
from pneumonia_cam.support.images import load_image

SIZE = 64  # the checkpoint's image_size: small, so the test is fast; the files are large


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none").eval()
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "classes": list(CLASSES), "metrics": {},
                           "config": {"arch": "resnet18", "image_size": SIZE, "dilate_layer4": False}})
    return path, model


@pytest.fixture(scope="module")
def xray_dir(tmp_path_factory):
    """Kaggle-like folder: person1_virus_1.jpeg (1200x900, L), IM-0001-0001.jpeg (900x1200, RGB),
    scan16.png (16-bit), broken.jpeg (not an image), plus .DS_Store and __MACOSX/ junk."""
    root = tmp_path_factory.mktemp("xrays")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:900, 0:1200]
    chest = (120 + 60 * np.sin(xx / 90.0) * np.cos(yy / 70.0) + rng.normal(0, 10, (900, 1200))).clip(0, 255)
    Image.fromarray(chest.astype(np.uint8), "L").save(root / "person1_virus_1.jpeg", quality=90)
    rgb = np.repeat(chest.T[:, :, None], 3, axis=2).astype(np.uint8)  # 1200 tall, 900 wide
    Image.fromarray(rgb, "RGB").save(root / "IM-0001-0001.jpeg", quality=90)
    sub = root / "more"
    sub.mkdir()
    Image.fromarray((chest[:300, :400] * 256).astype(np.uint16)).save(sub / "scan16.png")
    (root / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._person1_virus_1.jpeg").write_bytes(b"\0\5\26\7")
    return root


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_with_one_bad_file(tmp_path, checkpoint, xray_dir, capsys):
    ck, model = checkpoint
    out = tmp_path / "cams"
    rc = main([str(xray_dir), "--checkpoint", str(ck), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2  # something failed
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "broken.jpeg" in lines[0] and "Traceback" not in err  # one line
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["file"].split("/")[-1] for r in rows) == ["IM-0001-0001.jpeg", "person1_virus_1.jpeg",
                                                              "scan16.png"]
    tf = make_transforms(SIZE)["test"]
    for r in rows:
        assert (out / r["overlay"]).is_file() and r["overlay"].endswith("_cam.png")
        p = torch.tensor([float(r["p_normal"]), float(r["p_pneumonia"])])
        assert abs(p.sum().item() - 1) < 1e-5
        assert r["predicted"] == CLASSES[int(p.argmax())] == r["class_shown"]  # --class pred
        assert r["trained_on"] == "unknown"  # the fixture's config does not say where its data came from
        # exactly the evaluation preprocessing: same probabilities as the pipeline used in testing
        image = load_image(r["file"])
        article_tf = T.Compose(tf.transforms[:-1])  # the same steps without Normalize
        with torch.no_grad():
            expected = model(tf(image)[None]).exp()[0]
            unnormalized = model(article_tf(image)[None]).exp()[0]
        torch.testing.assert_close(p, expected, atol=2e-6, rtol=0)
        assert (p - unnormalized).abs().max() > 1e-4  # ...and the normalization is really applied
    with Image.open(out / rows[0]["overlay"]) as im:
        assert im.format == "PNG"


def test_fixed_class_gradcam_and_explicit_files(tmp_path, checkpoint, xray_dir, capsys):
    ck, _ = checkpoint
    out = tmp_path / "cams"
    files = [str(xray_dir / "person1_virus_1.jpeg"), str(xray_dir / "more" / "scan16.png")]
    rc = main([*files, "--checkpoint", str(ck), "--out", str(out), "--class", "pneumonia",
               "--method", "gradcam", "--batch-size", "1"])
    assert rc == 0 and capsys.readouterr().err == ""
    rows = read_csv(out / "predictions.csv")
    assert [r["class_shown"] for r in rows] == ["PNEUMONIA", "PNEUMONIA"]
    assert all(r["method"] == "gradcam" and (out / r["overlay"]).is_file() for r in rows)


@pytest.mark.parametrize("bad", ["checkpoint", "input"])
def test_user_errors_are_one_line_exit_2(tmp_path, checkpoint, xray_dir, capsys, bad):
    ck, _ = checkpoint
    args = [str(xray_dir), "--checkpoint", str(ck), "--out", str(tmp_path / "o")]
    if bad == "checkpoint":
        args[2] = str(tmp_path / "missing.pt")
    else:
        args[0] = str(tmp_path / "no_such_dir")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err


@pytest.mark.parametrize("data_dir, kind", [(None, "phantoms"), ("phantom_set", "phantoms"),
                                            ("kaggle", "real")])
def test_checkpoint_says_what_it_was_trained_on(tmp_path, checkpoint, xray_dir, capsys, data_dir, kind):
    """A model trained on phantoms gets one warning line; predictions.csv names the training data's kind."""
    _, model = checkpoint
    if data_dir is not None:  # a folder given as --data-dir: a generated phantom set has phantoms.json
        (tmp_path / data_dir).mkdir()
        if data_dir == "phantom_set":
            (tmp_path / data_dir / "phantoms.json").write_text("{}")
        data_dir = str(tmp_path / data_dir)
    ck = tmp_path / "best.pt"
    save_checkpoint(ck, {"model": model.state_dict(), "classes": list(CLASSES), "metrics": {},
                         "config": {"arch": "resnet18", "image_size": SIZE, "dilate_layer4": False,
                                    "data_dir": data_dir}})
    out = tmp_path / "cams"
    files = [str(xray_dir / "person1_virus_1.jpeg"), str(xray_dir / "more" / "scan16.png")]
    assert main([*files, "--checkpoint", str(ck), "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    if kind == "phantoms":
        assert len(err) == 1 and err[0].startswith("warning:") and "phantoms" in err[0]
        assert "meaningless" in err[0] and str(ck) in err[0]
    else:
        assert err == []
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 2 and all(r["trained_on"] == kind for r in rows)
