"""Every path a user passes, pointed at the wrong thing: one line that names the file, says what it
is, and gives the fix; never a traceback. A run folder given as ``--checkpoint`` means its ``best.pt``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_cam import CLASSES, train
from pneumonia_cam.cam import main as cam_main
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.checkpoint import CheckpointError, file_kind, load_checkpoint, save_checkpoint
from pneumonia_cam.support.weights import WeightsUnavailableError

SIZE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as the train command leaves it: best.pt, metrics.json, a PNG."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("runs") / "demo"
    root.mkdir()
    model = build_model("resnet18", weights="none").eval()
    save_checkpoint(root / "best.pt", {"model": model.state_dict(), "classes": list(CLASSES), "metrics": {},
                                       "config": {"arch": "resnet18", "image_size": SIZE}})
    (root / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}) + "\n")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "cam_grid.png")
    return root


@pytest.fixture(scope="module")
def xray(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(path)
    return path


def _wrong_files(tmp_path, run_dir):
    notes = tmp_path / "notes.pt"
    notes.write_bytes(b"hello\n")  # 6 bytes of text
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    zipped = tmp_path / "photos.zip"
    import zipfile

    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.txt", "not a tensor")
    return {"a text file": notes, "a JSON file": run_dir / "metrics.json", "a PNG image": run_dir / "cam_grid.png",
            "an empty file": empty, "a zip archive that is not a PyTorch checkpoint": zipped}


def test_file_kind_names_what_is_not_a_checkpoint(tmp_path, run_dir):
    for kind, path in _wrong_files(tmp_path, run_dir).items():
        assert file_kind(path) == kind
    assert file_kind(run_dir) == "a folder"
    assert file_kind(run_dir / "best.pt") is None  # a real checkpoint is not judged by its bytes


@pytest.mark.parametrize("kind", ["a text file", "a JSON file", "a PNG image", "an empty file",
                                  "a zip archive that is not a PyTorch checkpoint"])
def test_cam_on_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, run_dir, xray, capsys, kind):
    path = _wrong_files(tmp_path, run_dir)[kind]
    code = cam_main([str(xray), "--checkpoint", str(path), "--out", str(tmp_path / "cams"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err == (f"error: {path} is {kind}, not a PyTorch checkpoint; pass the best.pt or last.pt of a "
                   f"run folder written by python -m pneumonia_cam.train")
    assert "pickled" not in err and "could run code" not in err  # a JSON file is not a security problem


def test_cam_on_a_run_folder_uses_its_best_pt_and_says_so(tmp_path, run_dir, xray, capsys):
    code = cam_main([str(xray), "--checkpoint", str(run_dir), "--out", str(tmp_path / "cams"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"note: {run_dir} is a run folder: using {run_dir / 'best.pt'}, the run's best weights" in out
    assert (tmp_path / "cams" / "predictions.csv").is_file()


def test_cam_on_a_folder_without_best_pt_is_one_line(tmp_path, xray, capsys):
    code = cam_main([str(xray), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "cams"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{tmp_path} is a folder without a best.pt" in err


def test_a_checkpoint_with_code_in_it_is_still_called_unsafe(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": np.float64}, path)  # a global weights_only refuses
    with pytest.raises(CheckpointError, match="it is a PyTorch file, but it contains pickled objects") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_truncated_checkpoint_is_called_truncated(tmp_path, run_dir):
    path = tmp_path / "cut.pt"
    path.write_bytes((run_dir / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="it is a PyTorch file that is truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["a text file", "a JSON file", "a PNG image"])
def test_weights_path_that_is_no_state_dict_says_what_it_is(tmp_path, run_dir, kind):
    path = _wrong_files(tmp_path, run_dir)[kind]
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("resnet18", weights=str(path))
    assert str(err.value).startswith(f"weights file {path} is {kind}, not a PyTorch state dict")
    assert "\n" not in str(err.value)


def test_weights_path_that_is_a_folder(run_dir):
    with pytest.raises(WeightsUnavailableError, match=f"weights {run_dir} is a folder, not a file"):
        build_model("resnet18", weights=str(run_dir))


def test_train_weights_text_file_is_one_line(tmp_path, run_dir, tiny_train_args, capsys):
    path = _wrong_files(tmp_path, run_dir)["a text file"]
    code = train.main([*tiny_train_args, "--weights", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and f"{path} is a text file, not a PyTorch state dict" in err[0]


def test_resume_with_a_broken_last_pt_is_one_line(tmp_path, tiny_train_args, capsys):
    assert train.main([*tiny_train_args, "--epochs", "1"]) == 0
    run = tmp_path / "runs" / "tiny"
    (run / "last.pt").write_bytes(b"garbage that is not a checkpoint\n")
    capsys.readouterr()
    code = train.main([*tiny_train_args, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert f"{run / 'last.pt'} is a text file, not a PyTorch checkpoint" in err[0]
    assert (run / "best.pt").is_file()  # nothing of the first run was lost


def test_data_dir_that_is_a_file_says_so(tmp_path, tiny_train_args, capsys):
    path = tmp_path / "chest_xray.zip"
    path.write_bytes(b"PK\x03\x04")
    args = list(tiny_train_args)
    args[args.index("--data-dir") + 1] = str(path)
    code = train.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"--data-dir {path} is a file, not a folder" in err[0]
