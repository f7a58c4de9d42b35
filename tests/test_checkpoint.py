"""Checkpoints: atomic saves, weights_only loads, clear errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from pneumonia_cam.extensions.map_model import build_map_model, load_model
from pneumonia_cam.support import checkpoint as ck
from pneumonia_cam.support.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pneumonia_cam.support.runtime import capture_rng, restore_rng


def _payload(arch="resnet18", num_classes=2, dilate=False) -> dict:
    torch.manual_seed(0)
    model = build_map_model(arch, weights="none", num_classes=num_classes, dilate_layer4=dilate)
    return {"model": model.state_dict(), "config": {"arch": arch, "dilate_layer4": dilate},
            "classes": ["NORMAL", "PNEUMONIA", "OTHER"][:num_classes], "metrics": {"val": {"accuracy": 1.0}}}


def test_roundtrip_and_load_model(tmp_path):
    payload = _payload()
    path = save_checkpoint(tmp_path / "best.pt", payload)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temp file left behind
    model, loaded = load_model(path)
    assert not model.training
    assert loaded["classes"] == ["NORMAL", "PNEUMONIA"] and loaded["metrics"] == payload["metrics"]
    for k, v in payload["model"].items():
        assert torch.equal(model.state_dict()[k], v)


def test_load_model_rebuilds_dilated_layer4(tmp_path):
    path = save_checkpoint(tmp_path / "d.pt", _payload(dilate=True))
    model, _ = load_model(path)
    assert model.layer4[0].conv1.stride == (1, 1)


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}, "rng": np.zeros(3)})
    assert not any(tmp_path.iterdir())


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file cleaned up


class _Evil:
    """Unpickling this would run a command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(1)}, "config": _Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match="refused.*could run code") as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _payload())
    data = path.read_bytes()
    for n in (0, 100, len(data) // 2, len(data) - 20):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(path)


def test_missing_and_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        load_checkpoint(tmp_path / "odd.pt")


def test_wrong_architecture_names_what_was_expected(tmp_path):
    path = save_checkpoint(tmp_path / "r18.pt", _payload("resnet18"))
    with pytest.raises(CheckpointError, match="holds a resnet18 with 2 classes.*resnet50 with 2 classes"):
        load_model(path, arch="resnet50")
    with pytest.raises(CheckpointError, match="resnet18 with 3 classes was expected"):
        load_model(path, num_classes=3)


def test_config_lying_about_architecture(tmp_path):
    payload = _payload("resnet18")
    payload["config"]["arch"] = "resnet34"  # weights of an 18 labelled 34
    path = save_checkpoint(tmp_path / "liar.pt", payload)
    with pytest.raises(CheckpointError, match="does not fit a resnet34 with 2 classes"):
        load_model(path)


def test_wrong_class_count_in_weights(tmp_path):
    payload = _payload("resnet18", num_classes=3)
    payload["classes"] = ["NORMAL", "PNEUMONIA"]  # says 2, weights have 3
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="resnet18 with 2 classes"):
        load_model(path)


def test_rng_state_survives_a_weights_only_roundtrip(tmp_path):
    import random

    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = capture_rng(gen)
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    path = save_checkpoint(tmp_path / "rng.pt", {"model": {}, "rng": state})
    torch.manual_seed(9), np.random.seed(9), random.seed(9), gen.manual_seed(9)
    restore_rng(load_checkpoint(path)["rng"], gen)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])
