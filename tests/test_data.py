"""Data loading on a fake Kaggle tree: junk skipping, class checks, robust decoding, patient split,
loaders, and the one-line errors a user sees."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from pneumonia_cam.steps.data import make_datasets, make_loaders
from pneumonia_cam.support.images import BadImageError, ChestXrayFolder, DataError, load_image
from pneumonia_cam.support.splits import patient_id, patient_split

# Kaggle-style names; several images per patient on purpose (person1 has a virus and a bacteria scan).
KAGGLE = {
    "train/NORMAL": ["IM-0115-0001", "IM-0115-0002", "IM-0117-0001", "IM-0119-0001", "NORMAL2-IM-1427-0001",
                     "NORMAL2-IM-1427-0002", "NORMAL2-IM-1430-0001", "IM-0122-0001"],
    "train/PNEUMONIA": ["person1_virus_6", "person1_bacteria_1", "person3_virus_15", "person5_bacteria_17",
                        "person5_bacteria_18", "person5_bacteria_19", "person7_virus_25", "person8_bacteria_30",
                        "person10_virus_35", "person11_bacteria_41", "person100_bacteria_475", "person1010_virus_1695"],
    "val/NORMAL": ["NORMAL2-IM-1436-0001", "NORMAL2-IM-1437-0001"],
    "val/PNEUMONIA": ["person1946_bacteria_4874", "person1950_bacteria_4881"],
    "test/NORMAL": ["IM-0001-0001", "IM-0003-0001"],
    "test/PNEUMONIA": ["person78_bacteria_378", "person80_bacteria_389"],
}


def write_jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))  # various, mostly non-square sizes
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path, "JPEG")


@pytest.fixture
def kaggle(tmp_path) -> Path:
    root = tmp_path / "chest_xray"
    for k, (folder, stems) in enumerate(KAGGLE.items()):
        (root / folder).mkdir(parents=True)
        for j, stem in enumerate(stems):
            write_jpeg(root / folder / f"{stem}.jpeg", 100 * k + j)
    # The junk the real archive ships, plus a stray note.
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "NORMAL" / "._IM-0115-0001.jpeg").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("radiologist notes\n")
    mac = root / "train" / "PNEUMONIA" / "__MACOSX"
    mac.mkdir()
    (mac / "._person1_virus_6.jpeg").write_bytes(b"\0\5\26\7")
    (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
    (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0115-0001.jpeg").write_bytes(b"\0\5")
    return root


def test_junk_is_skipped_counted_and_warned_once(kaggle):
    with pytest.warns(UserWarning, match=r"skipped 5 hidden or non-image files") as record:
        ds = ChestXrayFolder(kaggle / "train")
    assert len([w for w in record if "skipped" in str(w.message)]) == 1
    # train/.DS_Store, NORMAL/.DS_Store, NORMAL/._IM-0115-0001.jpeg (AppleDouble, a ".jpeg" that is no
    # JPEG), PNEUMONIA/notes.txt, PNEUMONIA/__MACOSX/._person1_virus_6.jpeg.
    assert sorted(Path(p).name for p in ds.skipped) == [
        ".DS_Store", ".DS_Store", "._IM-0115-0001.jpeg", "._person1_virus_6.jpeg", "notes.txt"]
    assert len(ds) == 8 + 12
    assert all(p.endswith(".jpeg") and "__MACOSX" not in p and "/._" not in p for p, _ in ds.samples)
    assert ds.class_to_idx == {"NORMAL": 0, "PNEUMONIA": 1}
    assert Counter(ds.targets) == {0: 8, 1: 12}


def test_clean_folder_warns_nothing(kaggle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ChestXrayFolder(kaggle / "test")
    assert len(ds) == 4 and ds.skipped == []


def test_samples_load_as_rgb_tensors_of_the_requested_size(kaggle):
    with pytest.warns(UserWarning):
        ds = make_datasets(kaggle, size=32)
    assert {k: len(v) for k, v in ds.items()} == {"train": 20, "val": 4, "test": 4}
    for split in ("train", "val", "test"):
        x, y = ds[split][0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        # samples are sorted by class folder: the first is NORMAL (0), the last PNEUMONIA (1)
        assert y == 0 and ds[split][len(ds[split]) - 1][1] == 1


def test_wrong_class_folders_raise_a_clear_error(tmp_path):
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        write_jpeg(tmp_path / c / "a.jpeg", 0)
    with pytest.raises(DataError, match=r"found: \['cats', 'dogs'\]; expected \['NORMAL', 'PNEUMONIA'\]") as e:
        ChestXrayFolder(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_lowercase_class_folders_are_rejected_not_silently_reordered(tmp_path):
    for c in ("normal", "pneumonia"):
        (tmp_path / c).mkdir()
        write_jpeg(tmp_path / c / "a.jpeg", 0)
    with pytest.raises(DataError, match="expected"):
        ChestXrayFolder(tmp_path)


def test_missing_root_split_and_empty_class_raise_one_line_errors(kaggle, tmp_path):
    with pytest.raises(DataError, match="data folder not found") as e:
        make_datasets(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)
    import shutil

    shutil.rmtree(kaggle / "test")
    with pytest.raises(DataError, match=r"test: split folder missing"):
        make_datasets(kaggle)
    empty = tmp_path / "empty"
    (empty / "NORMAL").mkdir(parents=True)
    (empty / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match="fix:"):
        ChestXrayFolder(empty)


# ------------------------------------------------------------------------------------ load_image
def saved(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_16bit_png_is_scaled_by_its_bit_depth_not_clipped_to_white(tmp_path):
    a16 = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    p = saved(tmp_path, Image.fromarray(a16), "twelve.png")
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255])
    full = np.array([[0, 32768, 65535]], dtype=np.uint16)  # true 16-bit
    np.testing.assert_array_equal(np.asarray(load_image(saved(tmp_path, Image.fromarray(full), "s.png")))[0, :, 0],
                                  [0, 128, 255])


def test_other_modes_become_rgb(tmp_path):
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    rgba = Image.new("RGBA", (4, 4), (200, 200, 200, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # fully transparent: composited on black
    cases = {
        "gray.png": gray,
        "palette.png": gray.convert("P"),
        "rgba.png": rgba,
        "la.png": gray.convert("LA"),
        "cmyk.jpeg": Image.new("CMYK", (4, 4), (0, 0, 0, 0)),
        "bilevel.png": gray.convert("1"),
    }
    for name, img in cases.items():
        out = load_image(saved(tmp_path, img, name))
        assert out.mode == "RGB" and out.size == img.size, name
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (0, 0, 0)
    assert load_image(tmp_path / "rgba.png").getpixel((1, 1)) == (200, 200, 200)
    assert load_image(tmp_path / "cmyk.jpeg").getpixel((0, 0))[0] > 240  # no ink = white


def test_unreadable_files_raise_bad_image_error_naming_file_and_fix(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(jpeg, "JPEG")
    bad = {
        "empty.jpeg": b"",
        "truncated.jpeg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "text.jpeg": b"this is not an image\n",
    }
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(BadImageError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert name in msg and "fix:" in msg and "\n" not in msg
        assert isinstance(e.value, ValueError) and e.value.path == str(tmp_path / name)
    with pytest.raises(BadImageError, match="empty file"):
        load_image(tmp_path / "empty.jpeg")
    with pytest.raises(BadImageError):
        load_image(tmp_path / "missing.png")


def test_draft_size_hook_decodes_large_jpegs_smaller(tmp_path):
    p = saved(tmp_path, Image.fromarray(np.full((512, 640), 90, np.uint8)), "big.jpeg")
    assert load_image(p).size == (640, 512)
    assert load_image(p, draft_size=128).size == (160, 128)  # 1/4 scale: >= 128 on each side


# --------------------------------------------------------------------------------- patient split
@pytest.mark.parametrize("name, pid", [
    ("person1010_virus_1695.jpeg", "person1010"),
    ("person100_bacteria_475.jpeg", "person100"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("/data/chest_xray/train/NORMAL/IM-0115-0002.jpeg", "IM-0115"),
    ("phantom-train-00012.png", "phantom-train-00012"),
    ("scan.png", "scan"),
])
def test_patient_id(name, pid):
    assert patient_id(name) == pid


def synthetic_samples(n_patients: int = 120, seed: int = 0) -> list[tuple[str, int]]:
    """Kaggle-like samples: 1-4 images per patient, 30 % NORMAL patients."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = int(rng.random() > 0.3)
        for j in range(int(rng.integers(1, 5))):
            name = f"person{p}_virus_{j}.jpeg" if label else f"IM-{p:04d}-{j + 1:04d}.jpeg"
            out.append((f"/x/{'PNEUMONIA' if label else 'NORMAL'}/{name}", label))
    return out


def test_patient_split_no_overlap_fraction_stratified_seeded():
    samples = synthetic_samples()
    tr, va = patient_split(samples, 0.2, seed=0)
    assert sorted(tr + va) == list(range(len(samples))) and not set(tr) & set(va)
    pid = lambda idx: {patient_id(samples[i][0]) for i in idx}  # noqa: E731
    assert not pid(tr) & pid(va)  # no patient on both sides
    for label in (0, 1):  # stratified: each class gives ~20 % of its images, within one patient (<= 4)
        n_class = sum(1 for _, y in samples if y == label)
        n_val = sum(1 for i in va if samples[i][1] == label)
        assert abs(n_val - 0.2 * n_class) <= 4
    assert patient_split(samples, 0.2, seed=0) == (tr, va)
    assert patient_split(samples, 0.2, seed=1) != (tr, va)
    # Plain paths work too: the label is the parent folder.
    assert patient_split([p for p, _ in samples], 0.2, seed=0) == (tr, va)
    with pytest.raises(ValueError):
        patient_split(samples, 1.0)


def test_val_carved_from_train_is_patient_disjoint_and_uses_eval_transforms(kaggle):
    import shutil

    shutil.rmtree(kaggle / "val")  # not needed when carving
    with pytest.warns(UserWarning):
        ds = make_datasets(kaggle, size=32, val_from_train=0.3, seed=0)
    assert len(ds["train"]) + len(ds["val"]) == 20
    train_pids = {patient_id(p) for p, _ in ds["train"].samples}
    val_pids = {patient_id(p) for p, _ in ds["val"].samples}
    assert val_pids and not train_pids & val_pids
    assert set(ds["val"].targets) == {0, 1} and ds["val"].classes == ["NORMAL", "PNEUMONIA"]
    torch.manual_seed(0)
    assert torch.equal(ds["val"][0][0], ds["val"][0][0])  # eval pipeline: deterministic
    assert not all(torch.equal(ds["train"][0][0], ds["train"][0][0]) for _ in range(5))  # augmented


# --------------------------------------------------------------------------------------- loaders
def test_loaders_shuffle_train_only_seeded_and_pick_workers_sensibly():
    ds = {k: TensorDataset(torch.arange(40).float()) for k in ("train", "val", "test")}
    order = lambda loaders: torch.cat([b[0] for b in loaders["train"]]).tolist()  # noqa: E731
    a, b, c = make_loaders(ds, 8, seed=0), make_loaders(ds, 8, seed=0), make_loaders(ds, 8, seed=1)
    assert order(a) == order(b) != order(c)
    assert order(a) != list(range(40)) and sorted(order(a)) == list(range(40))
    assert torch.cat([x[0] for x in a["test"]]).tolist() == list(range(40))  # eval order kept
    assert a["train"].pin_memory is False
    assert a["train"].num_workers == min(2, __import__("os").cpu_count() or 1)
    assert a["train"].persistent_workers == (a["train"].num_workers > 0)
    tiny = make_loaders({"train": TensorDataset(torch.zeros(5))}, 8)
    assert tiny["train"].num_workers == 0 and tiny["train"].persistent_workers is False
    assert make_loaders(ds, 8, device="cuda")["val"].pin_memory is True


@pytest.mark.filterwarnings("ignore:.*skipped")  # the fixture's junk files
def test_images_kept_in_memory_give_the_same_samples_and_are_decoded_once(kaggle, monkeypatch):
    """Decode + Resize run once per image; the random augmentation still runs every epoch."""
    from pneumonia_cam.support import images
    from pneumonia_cam.support.splits import with_transform

    plain = make_datasets(kaggle, size=32)["train"]
    kept = make_datasets(kaggle, size=32)["train"]
    images.keep_in_memory(kept, 2**20)
    decoded = Counter()
    real = kept.loader
    kept.loader = lambda path: decoded.update([path]) or real(path)
    for epoch in range(3):
        for ds in (plain, kept):
            torch.manual_seed(epoch)  # the same augmentation draws for both
            ds.samples_now = [ds[i][0] for i in range(len(ds))]
        assert all(torch.equal(a, b) for a, b in zip(plain.samples_now, kept.samples_now))
    assert len(decoded) == len(kept) and set(decoded.values()) == {1}  # each file once in three epochs
    torch.manual_seed(0)
    first = kept[0][0]
    torch.manual_seed(1)
    assert not torch.equal(first, kept[0][0])  # still augmented afresh

    # A copy with another transform keeps its own images, of its own size.
    small = with_transform(kept, make_datasets(kaggle, size=16)["val"].transform)
    assert small[0][0].shape == (3, 16, 16) and kept[0][0].shape == (3, 32, 32)

    # The budget is respected: nothing is kept beyond it (32 x 32 RGB = 3072 bytes per image).
    tight = make_datasets(kaggle, size=32)["train"]
    images.keep_in_memory(tight, 2 * 3072)
    _ = [tight[i] for i in range(len(tight))]
    assert len(tight._memory.images) == 2 and tight._memory.used == 2 * 3072
