"""Bad-input corpus: every kind of broken or unusual file a user may feed us, generated
at test time and pushed through the data path, the train command and the cam command.

The policy under test is the one in the module docstring of ``pneumonia_cam.steps.data``:

* cannot be an image (``.DS_Store``, ``__MACOSX/``, text): skipped at scan time, counted in a warning;
* looks like an image but does not decode (empty, truncated, random bytes, DICOM, decompression bomb):
  ``BadImageError`` from ``load_image``; the datasets drop it with a warning naming every such file,
  or raise one ``DataError`` with ``strict=True`` / ``--strict-data``; cam reports it and continues;
* decodes in an unusual form (16-bit, RGBA, CMYK, palette, 1x1, 4000x20): loaded correctly;
* structural (missing path/split, no class folders, empty class folder): one-line error, exit 2.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pneumonia_cam import CLASSES, cam, train
from pneumonia_cam.steps.data import IMAGENET_MEAN, IMAGENET_STD, make_datasets, make_transforms
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.checkpoint import save_checkpoint
from pneumonia_cam.support.images import BadImageError, ChestXrayFolder, DataError, load_image

SIZE = 32  # network input side for every dataset, run and checkpoint here

# ------------------------------------------------------------------------------------ the corpus
# Files that decode (some in unusual forms), files that look like images but do not, and junk.
GOOD = ["plain.jpeg", "plain.png", "sixteen.png", "rgba.png", "cmyk.jpeg", "palette.png", "one.png", "wide.png"]
BAD = ["empty.jpeg", "truncated.jpeg", "random.jpeg", "bomb.png", "scan.dcm"]
JUNK = [".DS_Store", "notes.txt", "__MACOSX/._plain.jpeg"]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG *header* claiming ``width x height`` 8-bit gray pixels, with a few bytes of data.

    Opening it makes PIL read the claimed size and run its decompression-bomb check; nothing near
    that size is ever allocated.
    """
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _gray(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return (100 + 60 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 5, (h, w))).clip(0, 255).astype(np.uint8)


def write_corpus(folder: Path, seed: int = 0, kinds: tuple[str, ...] = tuple(GOOD + BAD + JUNK)) -> Path:
    """Write the named corpus files into ``folder`` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    g = _gray(seed=seed)
    jpeg = io.BytesIO()
    Image.fromarray(g, "L").save(jpeg, "JPEG", quality=90)
    palette = Image.fromarray((g // 4).astype(np.uint8), "P")
    palette.putpalette([v for i in range(256) for v in (min(4 * i, 255),) * 3])  # index i -> gray 4i
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[:, :24, 3] = 0  # left half fully transparent: composited on black
    cmyk = np.zeros((48, 48, 4), np.uint8)
    cmyk[:, 24:, 3] = 255  # left half no ink (white), right half full black ink
    ramp16 = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    writers = {
        "plain.jpeg": lambda p: p.write_bytes(jpeg.getvalue()),
        "plain.png": lambda p: Image.fromarray(g, "L").save(p),
        # a full-range 16-bit ramp: PIL's own convert("L") would clip nearly all of it to white
        "sixteen.png": lambda p: Image.fromarray(ramp16).save(p),
        "rgba.png": lambda p: Image.fromarray(rgba, "RGBA").save(p),
        "cmyk.jpeg": lambda p: Image.fromarray(cmyk, "CMYK").save(p, "JPEG", quality=95),
        "palette.png": lambda p: palette.save(p),
        "one.png": lambda p: Image.new("L", (1, 1), 77).save(p),
        "wide.png": lambda p: Image.fromarray(np.tile(g[:20, :40], (1, 100)), "L").save(p),  # 4000 x 20
        "empty.jpeg": lambda p: p.write_bytes(b""),
        "truncated.jpeg": lambda p: p.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        "random.jpeg": lambda p: p.write_bytes(np.random.default_rng(seed).bytes(3000)),
        "bomb.png": lambda p: p.write_bytes(_png_header_only(100_000, 100_000)),  # 10 gigapixels, claimed
        "scan.dcm": lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xc4\x00\x00\x00"),
        ".DS_Store": lambda p: p.write_bytes(b"\0\0\0\1Bud1\0\0\x10\0"),
        "notes.txt": lambda p: p.write_text("radiologist notes: see attached\n"),
        "__MACOSX/._plain.jpeg": lambda p: p.write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X"),
    }
    for name in kinds:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        writers[name](path)
    return folder


def write_tree(root: Path) -> Path:
    """Kaggle layout: train/{NORMAL,PNEUMONIA} each hold the whole corpus; val/ and test/ are clean."""
    for split in ("train", "val", "test"):
        for k, cls in enumerate(CLASSES):
            kinds = tuple(GOOD + BAD + JUNK) if split == "train" else ("plain.jpeg", "plain.png")
            write_corpus(root / split / cls, seed=k, kinds=kinds)
    return root


def _one_line(err: str) -> str:
    err = err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------- (a) load_image
def test_unusual_images_decode_to_correct_rgb(tmp_path):
    d = write_corpus(tmp_path / "c", kinds=tuple(GOOD))
    out = {name: load_image(d / name) for name in GOOD}
    assert all(im.mode == "RGB" for im in out.values())

    # 16-bit: scaled by its bit depth, not clipped to white. The ramp spans the full 16-bit range, so
    # its 8-bit version must span 0..255 with mean ~127.5 and almost no saturated pixels.
    a = np.asarray(out["sixteen.png"])[..., 0].astype(float)
    assert a.min() == 0 and a.max() == 255 and abs(a.mean() - 127.5) < 1.0
    assert (a == 255).mean() < 0.01  # PIL's convert("L") would make ~99 % of them 255
    with Image.open(d / "sixteen.png") as raw:
        assert raw.mode.startswith("I") and (np.asarray(raw.convert("L")) == 255).mean() > 0.9  # the trap is real

    rgba = np.asarray(out["rgba.png"])
    assert (rgba[:, :24] == 0).all() and (rgba[:, 24:] == 200).all()  # transparent -> black, opaque kept
    cmyk = np.asarray(out["cmyk.jpeg"]).astype(float)
    assert cmyk[:, :20].mean() > 240 and cmyk[:, 28:].mean() < 15  # no ink = white, black ink = black
    pal = np.asarray(out["palette.png"])[..., 0]
    np.testing.assert_array_equal(pal, np.minimum(4 * (_gray(seed=0) // 4), 255))  # index -> palette gray
    assert out["one.png"].size == (1, 1) and out["one.png"].getpixel((0, 0)) == (77, 77, 77)
    assert out["wide.png"].size == (4000, 20)

    # ...and each becomes a normal network input through both pipelines.
    tf = make_transforms(SIZE)
    for name, im in out.items():
        for split in ("train", "test"):
            x = tf[split](im)
            assert x.shape == (3, SIZE, SIZE) and torch.isfinite(x).all(), (name, split)


@pytest.mark.parametrize("name, reason", [
    ("empty.jpeg", "empty file"),
    ("truncated.jpeg", "truncated"),
    ("random.jpeg", "not a recognised image format"),
    ("bomb.png", "decompression bomb"),
    ("scan.dcm", "DICOM"),
])
def test_undecodable_files_raise_one_line_bad_image_error(tmp_path, name, reason):
    d = write_corpus(tmp_path / "c", kinds=(name,))
    with pytest.raises(BadImageError) as e:
        load_image(d / name, draft_size=SIZE)
    msg = str(e.value)
    assert str(d / name) in msg and reason in msg and "fix:" in msg and "\n" not in msg
    if name == "scan.dcm":
        assert "convert it to PNG/JPEG first" in msg
    # DICOM is recognised by content, whatever the file is called
    if name == "scan.dcm":
        shutil.copy(d / name, d / "renamed.png")
        with pytest.raises(BadImageError, match="convert it to PNG/JPEG first"):
            load_image(d / "renamed.png")


def test_decompression_bomb_guard_below_and_above_twice_the_limit(tmp_path, monkeypatch):
    """PIL warns above MAX_IMAGE_PIXELS and raises above twice it: both become a BadImageError."""
    small, large = tmp_path / "40.png", tmp_path / "64.png"
    Image.new("L", (40, 40)).save(small)  # 1,600 px
    Image.new("L", (64, 64)).save(large)  # 4,096 px
    assert load_image(small).size == (40, 40)  # fine under the default limit: the test can fail
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for path in (small, large):  # 1,600 px: PIL's warning range; 4,096 px: its error range
        with warnings.catch_warnings(record=True) as leaked:
            warnings.simplefilter("always")
            with pytest.raises(BadImageError, match=rf"{path.name}.*decompression bomb.*MAX_IMAGE_PIXELS"):
                load_image(path)
        assert not leaked  # reported once, as the error, not also as a stray DecompressionBombWarning


# ------------------------------------------------------------------------ (a) datasets, loader
def test_dataset_skips_junk_and_bad_images_counts_and_names_them(tmp_path):
    root = write_tree(tmp_path / "xr")
    with pytest.warns(UserWarning) as record:
        ds = ChestXrayFolder(root / "train", transform=make_transforms(SIZE)["val"])
    messages = [str(w.message) for w in record]
    junk_msg = [m for m in messages if "hidden or non-image" in m]
    bad_msg = [m for m in messages if "unreadable image" in m]
    assert len(junk_msg) == 1 and len(bad_msg) == 1, messages
    assert "skipped 6 hidden or non-image files" in junk_msg[0]  # 3 junk entries in each class folder
    assert f"skipped {2 * len(BAD)} unreadable image(s)" in bad_msg[0]
    for cls in CLASSES:  # every skipped file is named, with its reason
        for name in BAD:
            assert str(root / "train" / cls / name) in bad_msg[0]
    assert "DICOM" in bad_msg[0] and "decompression bomb" in bad_msg[0]

    assert sorted(Path(p).name for p, _ in ds.bad) == sorted(BAD * 2)
    assert sorted(Path(p).name for p in ds.skipped) == sorted(Path(j).name for j in JUNK * 2)
    assert len(ds) == 2 * len(GOOD) and sorted(Path(p).name for p, _ in ds.samples) == sorted(GOOD * 2)
    assert ds.targets == [t for _, t in ds.samples] and ds.imgs == ds.samples
    assert ds.targets.count(0) == ds.targets.count(1) == len(GOOD)

    # The 16-bit ramp reaches the network at mid-gray, not white.
    i = next(k for k, (p, _) in enumerate(ds.samples) if p.endswith("sixteen.png"))
    x = ds[i][0] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert abs(x.mean().item() - 0.5) < 0.05 and x.max().item() <= 1.0 + 1e-5

    # A whole epoch, in-process and with worker processes: every sample, no error.
    for workers in (0, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left to skip during the epoch
            batches = list(DataLoader(ds, batch_size=5, shuffle=True, num_workers=workers))
        assert sum(len(y) for _, y in batches) == len(ds)
        assert all(x.shape[1:] == (3, SIZE, SIZE) for x, _ in batches)


def test_strict_turns_the_skips_into_one_data_error_before_any_epoch(tmp_path):
    root = write_tree(tmp_path / "xr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the junk warning still comes: junk is skipped even when strict
        with pytest.raises(DataError) as e:
            make_datasets(root, size=SIZE, strict=True)
    msg = _one_line(str(e.value))
    assert f"{2 * len(BAD)} image(s) cannot be read" in msg and "--strict-data" in msg
    assert all(str(root / "train" / c / n) in msg for c in CLASSES for n in BAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean splits: strict changes nothing
        assert len(ChestXrayFolder(root / "test", strict=True)) == 4


@pytest.mark.parametrize("strict", [False, True])
def test_a_file_that_breaks_mid_run_does_not_kill_the_epoch(tmp_path, strict):
    root = write_tree(tmp_path / "xr")
    ds = ChestXrayFolder(root / "test", transform=make_transforms(SIZE)["val"], strict=strict)
    broken = root / "test" / "NORMAL" / "plain.png"
    broken.write_bytes(b"overwritten while training")  # after the scan
    loader = DataLoader(ds, batch_size=2, num_workers=0)
    if strict:
        with pytest.raises(DataError, match="plain.png"):
            list(loader)
        return
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*NORMAL/plain.png.*next sample"):
        n = sum(len(y) for _, y in loader)
    assert n == len(ds) == 4 and (str(broken), ds.bad[0][1]) in ds.bad


# ------------------------------------------------------------------------------ structural problems
def _flat(root: Path) -> None:
    write_corpus(root, kinds=("plain.jpeg", "plain.png"))


def _layout(root: Path, case: str) -> tuple[Path, str]:
    """Make a broken data root for ``case``; return (the --data-dir to pass, text the error must hold)."""
    if case == "missing path":
        return root / "does-not-exist", str(root / "does-not-exist")
    if case == "flat folder as root":  # images, no train/ val/ test/
        _flat(root)
        return root, str(root / "train")
    write_tree(root)
    if case == "split missing":
        shutil.rmtree(root / "val")
        return root, str(root / "val")
    if case == "flat split":  # train/ holds images, no class folders
        shutil.rmtree(root / "train")
        _flat(root / "train")
        return root, "class folders found: []"
    if case == "empty class folder":
        shutil.rmtree(root / "test" / "PNEUMONIA")
        (root / "test" / "PNEUMONIA").mkdir()
        return root, "PNEUMONIA"
    if case == "wrong class names":
        (root / "test" / "NORMAL").rename(root / "test" / "normal")
        return root, "expected ['NORMAL', 'PNEUMONIA']"
    if case == "class of bad images only":
        shutil.rmtree(root / "val" / "NORMAL")
        write_corpus(root / "val" / "NORMAL", kinds=tuple(BAD))
        return root, f"{root / 'val' / 'NORMAL'}: no readable image left"
    raise AssertionError(case)


STRUCTURAL = ["missing path", "flat folder as root", "split missing", "flat split", "empty class folder",
              "wrong class names", "class of bad images only"]


@pytest.mark.parametrize("case", STRUCTURAL)
def test_structural_problems_are_one_line_errors_in_data_and_train(tmp_path, case, tiny_train_args, capsys):
    data_dir, expected = _layout(tmp_path / "xr", case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as e:
            make_datasets(data_dir, size=SIZE)
        msg = _one_line(str(e.value))
        assert expected in msg and ("fix:" in msg), msg
        assert train.main(tiny_train_args + ["--data-dir", str(data_dir), "--epochs", "1"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error:") and (expected in err or str(data_dir) in err), err


# --------------------------------------------------------------------------------- (b) train
def test_train_skips_bad_images_and_names_them(tmp_path, tiny_train_args, capsys):
    root = write_tree(tmp_path / "xr")
    with pytest.warns(UserWarning) as record:
        rc = train.main(tiny_train_args + ["--data-dir", str(root), "--epochs", "1", "--name", "bad"])
    assert rc == 0, capsys.readouterr().err
    text = " ".join(str(w.message) for w in record)
    assert all(str(root / "train" / c / n) in text for c in CLASSES for n in BAD)
    metrics = json.loads((tmp_path / "runs" / "bad" / "metrics.json").read_text())
    assert metrics["data"]["n_train"] == 2 * len(GOOD) and metrics["data"]["n_test"] == 4


def test_train_strict_data_fails_before_training_with_one_line(tmp_path, tiny_train_args, capsys):
    root = write_tree(tmp_path / "xr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = train.main(tiny_train_args + ["--data-dir", str(root), "--epochs", "1", "--name", "strict",
                                           "--strict-data"])
    assert rc == 2
    err = _one_line(capsys.readouterr().err)
    assert "cannot be read" in err and str(root / "train" / "NORMAL" / "truncated.jpeg") in err
    assert not (tmp_path / "runs" / "strict" / "last.pt").exists()  # no epoch ran


def test_train_command_on_bad_tree_shows_warnings_never_a_traceback(tmp_path):
    """The real command line (a subprocess): what a user sees on stderr."""
    root = write_tree(tmp_path / "xr")
    proc = subprocess.run(
        [sys.executable, "-m", "pneumonia_cam.train", "--data-dir", str(root), "--out-dir", str(tmp_path / "runs"),
         "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
         "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "unreadable image" in proc.stderr and str(root / "train" / "PNEUMONIA" / "bomb.png") in proc.stderr
    assert (tmp_path / "runs" / "demo" / "metrics.json").is_file()


# ----------------------------------------------------------------------------------- (c) cam
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"model": build_model("resnet18", weights="none").state_dict(), "classes": list(CLASSES),
                           "metrics": {}, "config": {"arch": "resnet18", "image_size": SIZE, "dilate_layer4": False}})
    return path


def test_cam_reports_each_bad_file_and_processes_the_rest(tmp_path, tiny_checkpoint, capsys):
    d = write_corpus(tmp_path / "in")
    out = tmp_path / "cams"
    rc = cam.main([str(d), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--batch-size", "4"])
    captured = capsys.readouterr()
    assert rc == 2  # some files failed
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and all(line.startswith("error:") for line in lines)
    by_name = {Path(line.split(": cannot read image")[0].removeprefix("error: ")).name: line for line in lines}
    assert len(lines) == len(BAD) and sorted(by_name) == sorted(BAD)  # one line per bad file
    assert "convert it to PNG/JPEG first" in by_name["scan.dcm"]
    assert "decompression bomb" in by_name["bomb.png"]
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(GOOD)  # junk ignored, good ones all done
    assert all((out / r["overlay"]).is_file() for r in rows)
    assert f"{len(BAD)} file(s) could not be read" in captured.out


def test_cam_exit_codes_all_good_and_missing_path(tmp_path, tiny_checkpoint, capsys):
    d = write_corpus(tmp_path / "in", kinds=("one.png", "wide.png", "sixteen.png", ".DS_Store"))
    assert cam.main([str(d), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""
    rc = cam.main([str(d / "one.png"), str(tmp_path / "nope.png"), "--checkpoint", str(tiny_checkpoint),
                   "--out", str(tmp_path / "o2")])
    assert rc == 2 and str(tmp_path / "nope.png") in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()  # a typo in the command stops it before any work
