"""pneumonia_cam: detect pneumonia in chest X-rays with a transfer-learned ResNet and show where it
looked with a Class Activation Map (Zhou et al., CVPR 2016).

Read in this order. Imports point one way, down: the commands import the extensions, the
extensions the steps, the steps the support modules, and a step never imports a later step
(``tests/test_layers.py`` checks every import).

The article's steps, :mod:`pneumonia_cam.steps`:

1. ``gap``: global average pooling and the size of the head it allows (lesson 01).
2. ``data``: transforms, ImageFolder datasets, DataLoaders (lesson 02).
3. ``model``: the pretrained ResNet, frozen, with a new two-class head (lesson 02).
4. ``fit``: the training loop and evaluation; ``metrics``: accuracy, sensitivity, AUC (lesson 02).
5. ``hook``: a forward hook that keeps ``layer4``'s feature maps (lesson 03).
6. ``weighted_sum``: the Class Activation Map itself (lesson 03).
7. ``zoom``: upsampling the 7x7 map to the image (lesson 03).
8. ``overlay``: the heat map drawn over the X-ray (lesson 03).

Extensions beyond the article, :mod:`pneumonia_cam.extensions`: ``gradcam`` (Grad-CAM, and the
grid of maps a run draws), ``map_model`` (the pooled class-map head and the dilated ``layer4``, and
rebuilding any saved model), ``saliency`` (more maps from the same model), ``localization`` (does the
map point at the lesion?), ``feature_cache`` (run a frozen backbone once).

Support, :mod:`pneumonia_cam.support`: ``phantoms`` (the offline data set), ``images`` (robust image
reading), ``splits`` (patient-aware validation split), ``runtime`` (device, bf16, RNG), ``config``
(the run's dataclass and presets), ``weights`` (the pretrained file: cache, download, offline),
``checkpoint`` (atomic save, safe load), ``report`` (training figures), ``distributed`` (torchrun).

Commands, which wire the rest together: ``python -m pneumonia_cam.train`` (its phases in
:mod:`pneumonia_cam.pipeline`), ``python -m pneumonia_cam.cam``, ``python -m pneumonia_cam.study`` and
``python -m pneumonia_cam.exercises``.

Exercise mode, :mod:`pneumonia_cam.exercises`: ``python -m pneumonia_cam.exercises start 03_cam``
copies a lesson's stubs to ``my_exercises/``; ``pytest lessons/03_cam --student my_exercises`` judges them.
"""

__version__ = "0.1.0"

# Class order is part of the contract: ImageFolder sorts folder names, and the CAM weight row
# ``model.fc[0].weight[1]`` is PNEUMONIA only because "NORMAL" < "PNEUMONIA".
CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

# The three splits of the Kaggle layout (and of the generated phantoms), in this order.
SPLITS: tuple[str, str, str] = ("train", "val", "test")
