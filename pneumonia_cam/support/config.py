"""Training configuration: one typed dataclass, named presets, and nothing else.

Every knob of ``python -m pneumonia_cam.train`` is a field of :class:`TrainConfig`; the command line is a
thin argparse layer generated from these fields (their ``help`` metadata is the ``--help`` text), and a
preset is just a named instance. ``config.json`` in a run folder is ``dataclasses.asdict`` of the config
that ran, so a run can be reproduced (``--resume`` checks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pneumonia_cam.support.phantoms import PhantomConfig

_PHANTOMS = PhantomConfig()  # the phantom settings' defaults are the generator's own


def _f(default, help: str, **kw):
    """A dataclass field with its ``--help`` text attached (``metadata["help"]``)."""
    return field(default=default, metadata={"help": help, **kw})


def parse_sizes(text: str) -> list[int]:
    """``"128,128,176"`` -> ``[128, 128, 176]``; ``""`` -> ``[]``. Raises ValueError on anything else."""
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--early-sizes must be comma-separated integers like 128,128,176, got {text!r}") from None


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the ``demo`` preset's basics."""

    # --- run folder ---------------------------------------------------------------------------------
    name: str = _f("demo", "run name: outputs go to OUT_DIR/NAME/")
    out_dir: str = _f("runs", "parent folder of run folders")

    # --- data ---------------------------------------------------------------------------------------
    data_dir: str | None = _f(None, "Kaggle-layout root with train/ val/ test/ (NORMAL/, PNEUMONIA/); "
                                    "'none' = generate/reuse the phantom data set")
    val_from_train: float | None = _f(None, "carve this fraction of train (patient-aware) as validation "
                                            "instead of using val/ (the Kaggle val/ has 16 images)")
    image_size: int = _f(224, "side of the square network input in pixels")
    augment: bool = _f(True, "random augmentation of training images (the article's train transforms)")
    max_train_samples: int | None = _f(None, "use a seeded random subset of this many training images")
    max_eval_samples: int | None = _f(None, "use a seeded random subset of this many val and test images")
    strict_data: bool = _f(False, "stop with one error listing the unreadable images (empty, truncated, DICOM, ...) "
                                  "instead of skipping them with a warning")
    # Decoding a file and resizing it gives the same pixels every epoch; only the augmentation after
    # them is random. Keeping those pixels saves most of the per-image cost of later epochs.
    memory_mb: int = _f(1024, "keep each decoded, resized image in memory from its first use on, up to this "
                              "many MB per split and process (0: decode every image every epoch)")
    # Phantom data set (used when data_dir is None). Rendering difficulty is fixed in phantoms.py;
    # only the counts, size and seed are run settings. Their defaults are PhantomConfig's, so the demo
    # shares its cached data set with every other default use of the phantoms.
    phantom_size: int = _f(_PHANTOMS.size, "phantom image side in pixels")
    phantom_n_train: int = _f(_PHANTOMS.n_train, "phantom training images")
    phantom_n_val: int = _f(_PHANTOMS.n_val, "phantom validation images")
    phantom_n_test: int = _f(_PHANTOMS.n_test, "phantom test images")
    phantom_seed: int = _f(_PHANTOMS.seed, "phantom generator seed")

    # --- model ----------------------------------------------------------------------------------------
    arch: str = _f("resnet18", "resnet18 | resnet34 | resnet50 | resnet101 | resnet152")
    weights: str = _f("none", "imagenet (torchvision's IMAGENET1K_V1 file: from its cache, else downloaded "
                              "into it) | none | PATH to a state dict")
    # Also forced on by the environment variable PNEUMONIA_CAM_OFFLINE=1 (CI and the test suite).
    offline: bool = _f(False, "never download: --weights imagenet then needs the file already in "
                              "torchvision's cache ($TORCH_HOME/hub/checkpoints/)")
    freeze_backbone: bool = _f(False, "train only the new head (the article's recipe)")
    dilate_layer4: bool = _f(False, "output stride 16: 14x14 CAM grid at 224 px instead of 7x7")
    # How the head pools over the grid (pneumonia_cam.extensions.map_model.ClassMapPool). mean is the article's
    # GAP + linear head; lse and topk pool the class map itself, so a few cells can decide the logit.
    pooling: str = _f("mean", "mean (the article's GAP + linear head) | lse (log-sum-exp of the class map) | "
                              "topk (mean of the class map's top cells)")
    # r of log-sum-exp: r -> 0 is the mean, r -> infinity the max; Wang et al. (ChestX-ray8, CVPR 2017)
    # found r = 10 best.
    lse_r: float = _f(10.0, "with --pooling lse: the sharpness r > 0 (small: mean, large: max)")
    # 0.1: 5 of the 49 cells at 7x7 (20 of 196 at 14x14), about the area of a large phantom lesion
    # (7.5 % of the image at the 90th percentile) with its spill into the neighbouring cells.
    topk_fraction: float = _f(0.1, "with --pooling topk: the share of cells averaged, in (0, 1] "
                                   "(1: the mean, 1/cells: the max)")

    # --- optimization (Adam + StepLR, as in the article) ------------------------------------------------
    epochs: int = _f(5, "passes over the training set")
    # Cheaper early epochs: a 128 px image costs a third of the compute of a 224 px one. Epoch i
    # (i = 1, 2, ...) trains on EARLY_SIZES[i-1] px images, validated at that size too; every later
    # epoch, and every test and CAM pass, runs at IMAGE_SIZE, and only IMAGE_SIZE epochs can become
    # the best. At least the last epoch always runs at IMAGE_SIZE, and a size not smaller than
    # IMAGE_SIZE means IMAGE_SIZE.
    early_sizes: str = _f("128,128,128,176", "training image side of each of the first epochs, comma-separated "
                                             "(\"\" for none); the remaining epochs train at --image-size")
    batch_size: int = _f(32, "images per optimizer step (under torchrun: the global batch, split over the processes)")
    lr: float = _f(5e-4, "Adam learning rate (the article: 1e-3, torch's default)")
    weight_decay: float = _f(0.0, "Adam L2 weight decay")
    step_size: int = _f(4, "StepLR: multiply lr by GAMMA every STEP_SIZE epochs")
    gamma: float = _f(0.1, "StepLR decay factor")
    class_weights: str = _f("none", "none | balanced (NLLLoss weights inversely proportional to class counts)")

    # --- feature cache (pneumonia_cam.extensions.feature_cache) -----------------------------------------------------------
    cache_features: bool = _f(False, "with --freeze-backbone: run the backbone once per image and train the head "
                                     "on its cached pooled features (eval transforms, so no augmentation); "
                                     "same head as without the cache, many times faster")
    feature_views: int = _f(0, "with --cache-features: cache this many augmented views of each training image "
                               "instead of one un-augmented view (one backbone pass per view)")
    feature_cache_dir: str | None = _f(None, "with --cache-features: also keep the features in this folder, reused "
                                             "while weights, image files and transforms are unchanged")

    # --- hardware and reproducibility --------------------------------------------------------------------
    device: str = _f("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    precision: str = _f("auto", "auto (bf16 autocast where the CPU/GPU supports it) | fp32 | bf16")
    # NHWC: the layout oneDNN's (CPU) and cuDNN's (GPU) fast convolutions work in.
    channels_last: bool = _f(True, "NHWC memory format for model and inputs (faster convolutions)")
    # 0: decode in the training process. A worker process competes with the compute threads for the
    # same cores, and with persistent workers a resumed run would draw different augmentations than an
    # uninterrupted one (see pneumonia_cam.train).
    workers: int | None = _f(0, "DataLoader worker processes (none = data.make_loaders' choice)")
    seed: int = _f(0, "seed for weights init, shuffling, augmentation and subsets")

    def epoch_sizes(self) -> list[int]:
        """The training image side of every epoch: ``early_sizes`` (capped at ``image_size``, at most
        ``epochs - 1`` of them), then ``image_size``."""
        early = [min(v, self.image_size) for v in parse_sizes(self.early_sizes)[: max(self.epochs - 1, 0)]]
        return early + [self.image_size] * (self.epochs - len(early))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be silently ignored).

        A config saved before ``early_sizes`` existed (``early_epochs`` N at ``early_image_size`` S)
        reads as N times S."""
        d = dict(d)
        if "early_epochs" in d or "early_image_size" in d:
            n, size = d.pop("early_epochs", 0), d.pop("early_image_size", 0)
            d.setdefault("early_sizes", ",".join([str(size)] * n))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**d)


#: Named presets. ``demo`` is the default of ``python -m pneumonia_cam.train``.
PRESETS: dict[str, TrainConfig] = {
    # Offline, CPU: a ResNet-18 trained from scratch on the phantoms at 224 px. Spelled out although
    # these are the defaults, so the recipe reads in one place. lr 5e-4 rather than Adam's 1e-3: a
    # network trained from scratch needs the smaller step to leave the majority class; StepLR(4)
    # gives 4 epochs at lr, then 1 at lr/10 to settle the validation accuracy. Epochs 1-3 train at
    # 128 px (a third of the compute), epoch 4 at 176 px (about 60 %), the last at the article's 224 px,
    # which the final model, the evaluation and the CAMs use.
    "demo": TrainConfig(
        name="demo", data_dir=None, arch="resnet18", weights="none", freeze_backbone=False,
        image_size=224, epochs=5, early_sizes="128,128,128,176", batch_size=32, lr=5e-4, step_size=4,
        gamma=0.1, precision="auto", channels_last=True, workers=0,
    ),
    # The article: frozen ImageNet ResNet-152, a new 2-class head, Adam + StepLR(4), 10 epochs.
    # Needs --data-dir (Kaggle layout); the weights file is downloaded once into torchvision's cache
    # (see weights.expected_weights_file), or must already be there with --offline.
    "article": TrainConfig(
        name="article", arch="resnet152", weights="imagenet", freeze_backbone=True,
        epochs=10, early_sizes="", batch_size=256, lr=1e-3, step_size=4, gamma=0.1, image_size=224, workers=None,
    ),
}
