"""Mistake (the article's): imshow(rgb, cmap="jet") of the X-ray, then the map: a (H, W, 3) array ignores cmap."""

from pneumonia_cam.steps.weighted_sum import normalize_cam

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "show_cam_on_image"
CAUGHT_BY = ["test_overlay.py::test_overlay_is_the_gray_xray_under_the_jet_map"]


def show_cam_on_image(ax, image, cam, mask=None, alpha=0.5, title=None, normalize=True):  # noqa: F811
    H, W = image.shape[-2:]
    cam = cam.detach().double()
    if cam.shape != (H, W):
        cam = upsample(cam, (H, W))
    if normalize:
        cam = normalize_cam(cam)
    ax.imshow(denormalize(image).permute(1, 2, 0).numpy(), cmap="jet")  # (H, W, 3): cmap ignored
    heat = ax.imshow(cam.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if mask is not None:
        ax.contour(mask.astype(float), levels=[0.5], colors="white")
    return heat
