"""``python -m pneumonia_cam.train``: artifacts, --help, misuse exit codes, offline weights."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from pneumonia_cam import pipeline, train
from pneumonia_cam.extensions.map_model import load_model
from pneumonia_cam.support.checkpoint import load_checkpoint
from pneumonia_cam.support.config import PRESETS, TrainConfig


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    for flag in ("--preset", "--resume", "--overwrite", "--no-freeze-backbone", "--val-from-train"):
        assert flag in out


def test_tiny_run_writes_every_artifact(tiny_train_args, tmp_path, capsys):
    assert train.main(tiny_train_args) == 0
    run_dir = tmp_path / "runs" / "tiny"
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "best.pt", "last.pt", "history.csv", "metrics.json",
            "curves.png", "confusion.png", "roc.png", "cam_grid.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["image_size"] == 32 and cfg["epochs"] == 2 and cfg["arch"] == "resnet18"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        assert {"accuracy", "sensitivity", "specificity", "precision", "f1", "auc", "confusion"} <= set(metrics[split])
    assert metrics["data"]["n_test"] == 8 and metrics["test"]["n"] == 8
    assert set(metrics["val_threshold"]) == {"threshold", "val", "test"}
    assert {"total_s", "fit_s", "epoch_seconds"} <= set(metrics["timing"])
    assert metrics["machine"]["torch"] == torch.__version__
    assert 1 <= metrics["best_epoch"] <= 2

    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]

    model, best = load_model(run_dir / "best.pt")  # weights_only load, architecture from the config
    assert best["classes"] == ["NORMAL", "PNEUMONIA"] and best["config"] == cfg
    assert best["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    last = load_checkpoint(run_dir / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "best", "history", "config", "classes",
            "metrics"} <= set(last)
    assert last["epoch"] == 2 and isinstance(last["rng"]["loader"], torch.Tensor)

    assert metrics["localization"] is None  # a Kaggle-layout folder has no lesion masks
    for png in ("curves.png", "confusion.png", "roc.png", "cam_grid.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "sensitivity" in out and "test" in out and str(run_dir) in out


def test_existing_run_is_refused_then_overwritten(tiny_train_args, tmp_path, capsys):
    args = tiny_train_args + ["--epochs", "1"]
    assert train.main(args) == 0
    capsys.readouterr()
    marker = tmp_path / "runs" / "tiny" / "keep-me"
    marker.write_text("x")
    assert train.main(args) == 2
    err = _error_line(capsys)
    assert "already exists" in err and "--resume" in err and "--overwrite" in err
    assert marker.exists()  # nothing was touched
    assert train.main(args + ["--overwrite"]) == 0
    assert not marker.exists()


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--val-from-train", "1.5"], "--val-from-train"),
    (["--image-size", "8"], "--image-size"),
    (["--memory-mb", "-1"], "--memory-mb must be >= 0"),
    (["--early-sizes", "128;160"], "--early-sizes must be comma-separated integers"),
    (["--early-sizes", "16,32"], "--early-sizes must all be >= 32"),
    (["--data-dir", "/nonexistent/chest_xray"], "/nonexistent/chest_xray"),
    (["--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
    (["--resume"], "last.pt"),
    (["--name", "../escape"], "--name"),
])
def test_misuse_exits_2_with_one_line(tiny_train_args, extra, message, capsys):
    assert train.main(tiny_train_args + extra) == 2
    assert message in _error_line(capsys)


@pytest.mark.parametrize("extra", [["--epochs", "two"], ["--arch", "vgg16"], ["--precision", "fp16"],
                                   ["--no-such-flag"]])
def test_bad_flag_values_exit_2(tiny_train_args, extra):
    with pytest.raises(SystemExit) as exit_:
        train.main(tiny_train_args + extra)
    assert exit_.value.code == 2


def test_missing_imagenet_weights_names_the_file(tiny_train_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert train.main(tiny_train_args + ["--weights", "imagenet"]) == 2
    err = _error_line(capsys)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "--weights none" in err and "--weights PATH" in err


def test_article_preset_needs_data_dir(capsys):
    assert train.main(["--preset", "article", "--no-progress"]) == 2
    assert "--data-dir" in _error_line(capsys)
    assert PRESETS["article"].arch == "resnet152" and PRESETS["article"].freeze_backbone


def test_unwritable_out_dir_is_detected_before_training(tiny_train_args, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert train.main(tiny_train_args + ["--out-dir", str(blocker / "runs")]) == 2
    assert "cannot write" in _error_line(capsys)


def test_full_disk_is_detected_before_training(tiny_train_args, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train.shutil, "disk_usage", lambda p: usage(10 << 20, 9 << 20, 1 << 20))
    assert train.main(tiny_train_args) == 2
    assert "MiB free" in _error_line(capsys)
    assert not (tmp_path / "runs" / "tiny" / "last.pt").exists()


def test_resume_refuses_changed_settings(tiny_train_args, capsys):
    assert train.main(tiny_train_args + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert train.main(tiny_train_args + ["--resume", "--lr", "0.5"]) == 2
    assert "--lr" in _error_line(capsys)
    # Extending a finished run is allowed: it trains the missing epoch only.
    assert train.main(tiny_train_args + ["--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(tiny_train_args[tiny_train_args.index("--out-dir") + 1] + "/tiny/last.pt")["epoch"] == 2


def test_phantom_data_path(tmp_path, monkeypatch, capsys):
    """No --data-dir: phantoms are generated into the user cache ($XDG_CACHE_HOME) on first use."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["--out-dir", str(tmp_path / "runs"), "--phantom-size", "64", "--phantom-n-train", "8",
            "--phantom-n-val", "4", "--phantom-n-test", "4", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--device", "cpu", "--no-progress"]
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["data"]["phantoms"] and metrics["data"]["root"].startswith(str(tmp_path / "cache"))
    # Phantoms carry lesion masks: the run scores its maps and the baselines on the PNEUMONIA test images.
    loc = metrics["localization"]
    assert loc["n_images"] == 2 and 0 < loc["mean_lesion_fraction"] < 1  # 4 balanced test images
    for method in ("cam", "gradcam", "gradcam_layer3", "gaussian", "random", "lung_prior", "correct_lung"):
        assert 0.0 <= loc[method]["pointing_game"] <= 1.0 and 0.0 <= loc[method]["energy_pointing_game"] <= 1.0
        assert 0.0 <= loc[method]["hit_0px"] <= loc[method]["pointing_game"]
    assert (tmp_path / "runs" / "demo" / "cam_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_entry_point_reports_misuse_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pneumonia_cam.train", "--data-dir", str(tmp_path / "missing"),
                           "--out-dir", str(tmp_path / "runs"), "--no-progress"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert str(tmp_path / "missing") in proc.stderr


def test_demo_is_the_default_preset_and_the_dataclass_defaults():
    demo = PRESETS["demo"]
    assert demo == TrainConfig()
    assert (demo.arch, demo.weights, demo.freeze_backbone, demo.image_size, demo.data_dir) == \
        ("resnet18", "none", False, 224, None)
    assert TrainConfig.from_dict(demo.to_dict()) == demo
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({**demo.to_dict(), "lr_typo": 1})
    # A config saved before per-epoch sizes: N early epochs at one size.
    old = {k: v for k, v in demo.to_dict().items() if k != "early_sizes"}
    assert TrainConfig.from_dict({**old, "early_epochs": 3, "early_image_size": 160}).early_sizes == "160,160,160"
    assert TrainConfig.from_dict({**old, "early_epochs": 0, "early_image_size": 128}).epoch_sizes() == [224] * 5


def test_early_epochs_train_and_validate_on_smaller_images_and_never_become_best(tiny_train_args, tmp_path,
                                                                                   monkeypatch, capsys):
    """--early-sizes 32,32 with 3 epochs at 48 px: fit runs twice, first on 32 px training and validation
    images for 2 epochs that cannot become the best, then resumes on 48 px ones for the last, which can."""
    calls = []
    real_fit = pipeline.fit

    def recording_fit(model, loaders, config, **kw):
        calls.append((next(iter(loaders["train"]))[0].shape[-1], next(iter(loaders["val"]))[0].shape[-1],
                      config.epochs, config.select_best, None if kw.get("resume") is None else kw["resume"]["epoch"]))
        return real_fit(model, loaders, config, **kw)

    monkeypatch.setattr(pipeline, "fit", recording_fit)
    args = tiny_train_args + ["--epochs", "3", "--image-size", "48", "--early-sizes", "32,32"]
    assert train.main(args) == 0
    assert calls == [(32, 32, 2, False, None), (48, 48, 3, True, 2)]
    out = capsys.readouterr().out
    assert "epochs 1-2 train on 32 px images, epoch 3 on 48 px; each validates at its own size" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["best_epoch"] == 3 and len(metrics["history"]) == 3
    # At least the last epoch runs at full size, and an early size that is not smaller changes nothing.
    calls.clear()
    assert train.main(args + ["--name", "one", "--epochs", "1"]) == 0
    assert calls == [(48, 48, 1, True, None)]
    calls.clear()
    assert train.main(args + ["--name", "big", "--early-sizes", "64,48"]) == 0
    assert calls == [(48, 48, 3, True, None)]
    # A ramp: one stage per size, each resuming the last; sizes beyond epochs - 1 are ignored.
    calls.clear()
    assert train.main(args + ["--name", "ramp", "--early-sizes", "32,40,40,40"]) == 0
    assert calls == [(32, 32, 1, False, None), (40, 40, 2, False, 1), (48, 48, 3, True, 2)]


def test_validation_outputs_of_the_best_epoch_are_reused_not_recomputed(monkeypatch):
    """evaluate_splits takes val from fit's best epoch: the same numbers as scoring val again."""
    from torch.utils.data import DataLoader, TensorDataset

    from pneumonia_cam.steps.fit import FitConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    loaders = {"train": DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
               "val": DataLoader(TensorDataset(x[:24] + 0.3, (x[:24, 0] > 0).long()), batch_size=8),
               "test": DataLoader(ds, batch_size=8)}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.LogSoftmax(dim=1))
    state = fit(model, loaders, FitConfig(epochs=3, lr=0.05, device="cpu", precision="fp32"))
    trained = pipeline.Trained(state, model, loaders, "fp32", "fp32")

    scored = []
    real = pipeline.evaluate
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, desc, **k: scored.append(desc) or real(*a, desc=desc, **k))
    reused, _ = pipeline.evaluate_splits(trained, torch.device("cpu"), False, False)
    assert scored == ["test"]  # val was not forwarded again

    without = dict(state, best={k: v for k, v in state["best"].items() if not k.startswith("val_") or k in
                                ("val_acc", "val_loss")})
    again, _ = pipeline.evaluate_splits(pipeline.Trained(without, model, loaders, "fp32", "fp32"),
                                        torch.device("cpu"), False, False)
    assert scored == ["test", "val", "test"]
    assert reused == again


def test_fit_with_select_best_false_validates_but_keeps_no_best():
    """A warm-up call (select_best=False) logs validation every epoch but leaves ``best`` empty; resumed
    with select_best=True, only the later epochs compete, and the model ends up holding their best."""
    from torch.utils.data import DataLoader, TensorDataset

    from pneumonia_cam.steps.fit import FitConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    loaders = {"train": DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
               "val": DataLoader(ds, batch_size=8)}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.LogSoftmax(dim=1))
    cfg = FitConfig(epochs=4, lr=0.05, device="cpu", precision="fp32")
    lines = []
    warm = fit(model, loaders, dataclasses.replace(cfg, epochs=2, select_best=False), log=lines.append)
    assert [h["epoch"] for h in warm["history"]] == [1, 2] and all(h["val_acc"] > 0 for h in warm["history"])
    assert warm["best"]["epoch"] == 0 and warm["best"]["model"] is None
    assert not any("*best" in line for line in lines)
    state = fit(model, loaders, cfg, resume=warm)
    later = state["history"][2:]
    top = max(later, key=lambda h: (h["val_acc"], -h["val_loss"]))
    assert state["best"]["epoch"] == top["epoch"] in (3, 4)
    assert all(torch.equal(v, state["best"]["model"][k]) for k, v in model.state_dict().items())


def test_curves_mark_the_kept_epoch_and_each_epochs_size():
    """A staged run's smaller epochs can validate higher than the kept one (at their own size): the
    dashed line marks the epoch whose weights were kept, and each tick names its epoch's image size."""
    from pneumonia_cam.support.report import curves_figure

    history = [{"epoch": e, "train_loss": 0.5, "train_acc": 0.8, "val_loss": loss, "val_acc": acc}
               for e, loss, acc in ((1, 0.9, 0.6), (2, 0.1, 0.97), (3, 0.2, 0.95))]
    labels = lambda fig: fig.axes[1].get_legend().get_texts()[-1].get_text()  # noqa: E731
    assert labels(curves_figure(history)) == "best (epoch 2)"  # no kept epoch given: the best validation
    fig = curves_figure(history, best_epoch=3, sizes=[32, 40, 48])
    assert labels(fig) == "best (epoch 3)"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1\n32 px", "2\n40 px", "3\n48 px"]
    fig = curves_figure(history, best_epoch=3, sizes=[32, 48])  # sizes of fewer epochs: plain ticks
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]
