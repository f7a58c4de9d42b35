"""Lesson 04: the localization metrics (``pneumonia_cam.extensions.localization``) and the other maps (``saliency``): hand cases per metric, then the whole
evaluation on a model whose CAM is known to point at the lesion."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

from pneumonia_cam.extensions import localization as loc


def square_mask(size=224, y0=100, x0=100, side=20) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def peak_at(y, x, size=224) -> np.ndarray:
    s = np.zeros((size, size))
    s[y, x] = 1.0
    return s


# --- pointing game --------------------------------------------------------------------------------
def test_pointing_game_inside_near_and_far():
    mask = square_mask()  # rows/cols 100..119
    assert loc.pointing_game(peak_at(110, 110), mask)  # on the lesion
    assert loc.pointing_game(peak_at(110, 110), mask, tolerance=0)
    assert loc.pointing_game(peak_at(110, 129), mask)  # 10 px right of the edge: within 15 px
    assert not loc.pointing_game(peak_at(110, 129), mask, tolerance=5)
    assert not loc.pointing_game(peak_at(110, 160), mask)  # 41 px away
    # diagonal: 11 px right and 11 px below the corner is 15.56 px away, just outside
    assert not loc.pointing_game(peak_at(130, 130), mask)
    assert loc.pointing_game(peak_at(129, 129), mask)  # 14.14 px


def test_pointing_game_rejects_empty_masks_and_shape_mismatch():
    with pytest.raises(ValueError, match="empty"):
        loc.pointing_game(peak_at(5, 5), np.zeros((224, 224), bool))
    with pytest.raises(ValueError, match="shape"):
        loc.pointing_game(peak_at(5, 5, size=100), square_mask())


# --- energy-based pointing game ---------------------------------------------------------------------
def test_energy_pointing_game_hand_cases():
    mask = square_mask()
    area = mask.mean()  # 400 / 50176
    assert loc.energy_pointing_game(np.ones((224, 224)), mask) == pytest.approx(area)  # knows nothing
    assert loc.energy_pointing_game(mask.astype(float), mask) == 1.0  # knows everything
    assert loc.energy_pointing_game(np.zeros((224, 224)), mask) == 0.0  # no mass at all
    half = np.where(mask, 1.0, 0.0)
    half[0, :20] = 1.0  # 20 px of mass outside, 400 inside
    half[50, 50] = -100.0  # negative values carry no energy
    assert loc.energy_pointing_game(half, mask) == pytest.approx(400 / 420)


# --- Zhou's box and IoU -------------------------------------------------------------------------------
def test_zhou_box_takes_the_largest_component_above_20_percent():
    s = np.zeros((100, 100))
    s[10:30, 20:60] = 0.5  # large, 800 px, above 0.2 * max
    s[70:75, 70:75] = 1.0  # the maximum, but small (25 px)
    s[80:99, 0:30] = 0.1  # large but below 0.2 * max = 0.2
    assert loc.zhou_box(s) == (20, 10, 40, 20)  # (x, y, w, h)
    assert loc.zhou_box(s, threshold=0.6) == (70, 70, 5, 5)
    assert loc.zhou_box(np.zeros((10, 10))) is None


def test_box_iou_and_best_match():
    assert loc.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert loc.box_iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert loc.box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching, no overlap
    mask = square_mask(size=100, y0=10, x0=10, side=10) | square_mask(size=100, y0=60, x0=50, side=30)
    boxes = loc.mask_boxes(mask)
    assert sorted(boxes) == [(10, 10, 10, 10), (50, 60, 30, 30)]
    assert loc.best_box_iou((50, 60, 30, 30), boxes) == 1.0  # matches the second lesion
    assert loc.best_box_iou(None, boxes) == 0.0


# --- baselines --------------------------------------------------------------------------------------
def test_baselines():
    g = loc.gaussian_map((224, 224))
    assert g.shape == (224, 224) and g.max() <= 1.0
    assert np.unravel_index(g.argmax(), g.shape) in {(111, 111), (111, 112), (112, 111), (112, 112)}
    # By hand on a 5x5 grid: centre (2, 2), sigma = 0.25 * 5 = 1.25, so exp(-d^2 / (2 * 1.5625)).
    g5 = loc.gaussian_map((5, 5))
    assert g5[2, 2] == 1.0
    assert g5[2, 3] == pytest.approx(np.exp(-1 / 3.125)) and g5[0, 0] == pytest.approx(np.exp(-8 / 3.125))
    r1 = loc.random_maps(3, (7, 7), (224, 224), torch.Generator().manual_seed(0))
    r2 = loc.random_maps(3, (7, 7), (224, 224), torch.Generator().manual_seed(0))
    assert r1.shape == (3, 224, 224) and torch.equal(r1, r2)  # seeded
    assert not torch.equal(r1[0], r1[1])
    # normalized like a CAM: each map spans exactly [0, 1]
    assert r1.amin((1, 2)).tolist() == [0.0] * 3 and r1.amax((1, 2)).tolist() == [1.0] * 3
    # ...and smooth like an upsampled 7x7 map (bilinear x32: neighbours differ by a fraction of a cell),
    # not per-pixel noise
    assert r1.diff(dim=-1).abs().max() < 0.1 and r1.diff(dim=-2).abs().max() < 0.1


# --- masks in input coordinates ---------------------------------------------------------------------
def test_align_mask_follows_resize_and_center_crop():
    mask = np.zeros((300, 200), dtype=bool)  # portrait: Resize(100) -> 150x100, crop -> 100x100
    mask[100:200, 50:150] = True  # the central third of the height
    tf = T.Compose([T.Resize(100), T.CenterCrop(100), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    out = loc.align_mask(mask, tf)
    assert out.shape == (100, 100)
    ys, xs = np.nonzero(out)
    # scaled by 1/2: rows 50..100 of 150, minus the 25-row crop -> 25..75; cols 25..75
    assert abs(ys.min() - 25) <= 1 and abs(ys.max() - 74) <= 1
    assert abs(xs.min() - 25) <= 1 and abs(xs.max() - 74) <= 1
    with pytest.raises(ValueError, match="deterministic"):
        loc.align_mask(mask, T.Compose([T.RandomHorizontalFlip()]))


# --- the whole evaluation ---------------------------------------------------------------------------
class BrightnessNet(nn.Module):
    """A model whose class-1 CAM is the local brightness: layer3 = channel mean (full resolution),
    layer4 = 8x8 average pool. On images that are dark except for a bright "lesion", its CAM (and
    its Grad-CAM at layer3) points at the lesion."""

    def __init__(self):
        super().__init__()
        self.layer3 = nn.Conv2d(3, 1, 1, bias=False)  # (B, 3, 64, 64) -> (B, 1, 64, 64)
        nn.init.constant_(self.layer3.weight, 1 / 3)
        self.layer4 = nn.AvgPool2d(8)  # (B, 1, 64, 64) -> (B, 1, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(1, 2), nn.LogSoftmax(dim=1))
        with torch.no_grad():
            self.fc[0].weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc[0].bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer4(self.layer3(x))), 1))


def lesion_images(n=12, size=64, seed=0):
    """Every third image NORMAL (no lesion); the others a bright 12x12 square off-center."""
    rng = np.random.default_rng(seed)
    x = 0.05 * torch.from_numpy(rng.standard_normal((n, 3, size, size))).float()
    masks = []
    for i in range(n):
        m = np.zeros((size, size), dtype=bool)
        if i % 3:
            y0 = int(rng.choice([4, 44]))  # top or bottom edge region, never the centre
            x0 = int(rng.integers(4, size - 16))
            m[y0 : y0 + 12, x0 : x0 + 12] = True
            x[i, :, y0 : y0 + 12, x0 : x0 + 12] += 2.0
        masks.append(m)
    return x, torch.tensor([int(m.any()) for m in masks]), masks


def test_evaluate_localization_on_a_model_that_points_at_the_lesion():
    x, y, masks = lesion_images()
    model = BrightnessNet()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)  # batches cut across NORMAL/PNEUMONIA
    res = loc.evaluate_localization(model, loader, masks, tolerance=4)
    json.dumps(res)  # goes straight into metrics.json
    assert res["n_images"] == 8 and res["n_skipped_no_lesion"] == 4
    assert res["skipped_methods"] == ["dilated_cam", "lung_prior", "correct_lung"] and "dilated_cam" not in res
    assert res["mean_lesion_fraction"] == pytest.approx(144 / 64**2)
    assert res["cam"]["pointing_game"] == 1.0
    assert res["cam"]["energy_over_area"] > 3  # 1 = a map that knows nothing
    assert res["cam"]["box_iou"] > 0.3
    assert res["cam"]["map_size"] == [8, 8] and res["random"]["map_size"] == [8, 8]
    # Grad-CAM on the logit is CAM / (h w): same map after normalization, same scores
    for key in ("pointing_game", "energy_pointing_game", "box_iou"):
        assert res["gradcam"][key] == pytest.approx(res["cam"][key], abs=1e-9)
    assert res["gradcam_layer3"]["map_size"] == [64, 64] and res["gradcam_layer3"]["pointing_game"] == 1.0
    # the baselines, scored the same way, do much worse
    assert res["gaussian"]["pointing_game"] == 0.0  # lesions are never at the centre
    assert res["random"]["energy_pointing_game"] < res["cam"]["energy_pointing_game"] / 2
    # a tensor input gives the same result; dilated_model is scored when given
    res2 = loc.evaluate_localization(model, x, masks, tolerance=4, dilated_model=model, batch_size=4)
    assert res2["cam"] == res["cam"] and res2["dilated_cam"] == res["cam"]
    assert res2["random"] == res["random"]  # seeded


def test_evaluate_localization_bad_arguments():
    x, _, masks = lesion_images(n=4)
    with pytest.raises(ValueError, match="unknown methods"):
        loc.evaluate_localization(BrightnessNet(), x, masks, methods=("cam", "lime"))
    with pytest.raises(ValueError, match="masks"):
        loc.evaluate_localization(BrightnessNet(), x, masks[:3])
    with pytest.raises(ValueError, match="masks"):
        loc.evaluate_localization(BrightnessNet(), x, masks + masks)
    with pytest.raises(ValueError, match="align_mask"):
        loc.evaluate_localization(BrightnessNet(), x, [np.ones((32, 32), bool)] * 4)


def test_grad_cams_one_pass_equals_separate_calls():
    """evaluate_localization's single forward/backward gives what grad_cam gives layer by layer."""
    from pneumonia_cam.extensions.gradcam import grad_cam, grad_cams

    x, _, _ = lesion_images(n=3)
    model = BrightnessNet().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    maps, feats, log_probs = grad_cams(model, [model.layer4, model.layer3], x, 1)
    torch.testing.assert_close(maps[0], grad_cam(model, model.layer4, x, 1))
    torch.testing.assert_close(maps[1], grad_cam(model, model.layer3, x, 1))
    torch.testing.assert_close(feats[0], model.layer4(model.layer3(x)))
    torch.testing.assert_close(log_probs, model(x))
    assert len(model.layer3._forward_hooks) == len(model.layer4._forward_hooks) == 0


# --- more maps from the same model (pneumonia_cam.extensions.saliency) -------------------------------
from pneumonia_cam.extensions import saliency  # noqa: E402
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: E402


class TwoBlockNet(nn.Module):
    """layer3 (conv, ReLU, 16x16) -> layer4 (conv stride 2, ReLU, 8x8) -> GAP -> Linear -> LogSoftmax.

    ``symmetric=True`` makes every kernel mirror-symmetric left-right, so the network commutes with a
    horizontal flip (32 px input, padding 1, stride 2 on even sizes: the strided grid is not
    symmetric, hence stride 1 there and an AvgPool(2) to halve).
    """

    def __init__(self, symmetric=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer3 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))  # 32 -> 16
        self.layer4 = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))  # 16 -> 8
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(5, 2), nn.LogSoftmax(dim=1))
        with torch.no_grad():
            self.fc[0].bias.copy_(torch.tensor([0.3, -0.2]))
            if symmetric:
                for conv in (self.layer3[0], self.layer4[0]):
                    conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        self.double().eval()

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer4(self.layer3(x))), 1))


def _images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_layercam_at_the_last_block_is_the_cam_of_the_positive_weights():
    """d z_c / d A_k(x, y) = w_ck / (hw) for a GAP + linear head, so LayerCAM at layer4 is
    sum_k max(w_ck, 0) A_k / (hw); with positive weights, ReLU(CAM) / (hw)."""
    model, x = TwoBlockNet(), _images()
    w = model.fc[0].weight
    assert (w[1] < 0).any() and (w[1] > 0).any()  # mixed signs: the ReLU on the gradient matters
    feats = model.layer4(model.layer3(x)).detach()  # (3, 5, 8, 8)
    # LayerCAM at layer4 through the gradient, against the closed form
    with torch.enable_grad():
        a = model.layer4(model.layer3(x)).detach().requires_grad_(True)
        logit = model.fc[0](a.mean((2, 3)))[:, 1].sum()
        (g,) = torch.autograd.grad(logit, a)
    lc4 = saliency.layer_cam(a.detach(), g)
    torch.testing.assert_close(lc4, class_activation_map(feats, w.clamp_min(0), 1) / 64, rtol=0, atol=1e-12)
    with torch.no_grad():
        model.fc[0].weight.abs_()  # all positive: LayerCAM = ReLU(CAM) / (hw)
    maps = saliency.saliency_maps(model, x, ["cam", "layercam_layer34"], 1)
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.fc[0](a.mean((2, 3)))[:, 1].sum(), a)
    torch.testing.assert_close(saliency.layer_cam(a.detach(), g), maps["cam"].clamp_min(0) / 64, rtol=0, atol=1e-12)


def test_layercam_hand_case_and_fusion():
    """One cell by hand: A = (2, 3), dy/dA = (0.5, -1) -> ReLU(0.5 * 2 + 0 * 3) = 1."""
    a = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    g = torch.tensor([0.5, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    assert saliency.layer_cam(a, g).item() == 1.0
    assert saliency.layer_cam(-a, g).item() == 0.0  # the outer ReLU
    # fusion: each map normalized, tanh(2 .), upsampled to the finest grid, element-wise max
    fine = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], dtype=torch.float64)  # normalized: 0, .25, .5, 1
    coarse = torch.tensor([[[5.0]]], dtype=torch.float64)  # constant: normalizes to 0 everywhere
    fused = saliency.fuse_layer_cams([fine, coarse])
    torch.testing.assert_close(fused, torch.tanh(2 * torch.tensor([[[0.0, 0.25], [0.5, 1.0]]], dtype=torch.float64)))
    peak = torch.zeros(1, 2, 2, dtype=torch.float64)
    peak[0, 0, 0] = 1.0
    fused = saliency.fuse_layer_cams([peak, torch.ones(1, 1, 1, dtype=torch.float64) + 0 * coarse])
    assert fused.shape == (1, 2, 2) and fused[0, 0, 0] == pytest.approx(np.tanh(2.0))


def test_gradcam_layer3_from_the_shared_pass_equals_grad_cam():
    from pneumonia_cam.extensions.gradcam import grad_cam

    model, x = TwoBlockNet(), _images()
    maps = saliency.saliency_maps(model, x, ["gradcam_layer3", "gradcam", "cam"], 1)
    torch.testing.assert_close(maps["gradcam_layer3"], grad_cam(model, model.layer3, x, 1))
    torch.testing.assert_close(maps["gradcam"], maps["cam"] / 64)  # CAM / (hw) at layer4
    assert maps["gradcam_layer3"].shape == (3, 16, 16) and maps["cam"].shape == (3, 8, 8)
    assert len(model.layer3._forward_hooks) == len(model.layer4._forward_hooks) == 0


def test_one_forward_pass_for_the_gradient_maps():
    model, x = TwoBlockNet(), _images()
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    saliency.saliency_maps(model, x, ["cam", "gradcam", "gradcam_layer3", "layercam_layer3",
                                      "layercam_layer34", "contrastive_cam"], 1)
    assert len(calls) == 1
    saliency.saliency_maps(model, x, ["cam", "cam_flip"], 1)
    assert len(calls) == 3  # the flip adds one forward pass, reusing the CAM of x
    handle.remove()


def test_flip_averaging_of_a_flip_equivariant_net_is_the_cam():
    model, x = TwoBlockNet(symmetric=True), _images()
    # the net commutes with the flip: the CAM of the mirrored image is the mirrored CAM
    maps = saliency.saliency_maps(model, x, ["cam", "cam_flip"], 1)
    torch.testing.assert_close(maps["cam_flip"], maps["cam"], rtol=0, atol=1e-12)
    # ...and a net that does not commute gives a different map (the test can fail)
    model2 = TwoBlockNet(symmetric=False)
    maps2 = saliency.saliency_maps(model2, x, ["cam", "cam_flip"], 1)
    assert (maps2["cam_flip"] - maps2["cam"]).abs().max() > 1e-3
    ref = (maps2["cam"] + saliency.saliency_maps(model2, x.flip(-1), ["cam"], 1)["cam"].flip(-1)) / 2
    torch.testing.assert_close(maps2["cam_flip"], ref)


def test_contrastive_map_is_cam1_minus_cam0_and_averages_to_the_log_odds():
    model, x = TwoBlockNet(), _images()
    w, b = model.fc[0].weight, model.fc[0].bias
    feats = model.layer4(model.layer3(x)).detach()
    m = saliency.saliency_maps(model, x, ["contrastive_cam"], 1)["contrastive_cam"]
    expected = class_activation_map(feats, w, 1) - class_activation_map(feats, w, 0) + (b[1] - b[0])
    torch.testing.assert_close(m, expected, rtol=0, atol=1e-12)
    log_p = model(x).detach()
    torch.testing.assert_close(m.mean((1, 2)), log_p[:, 1] - log_p[:, 0], rtol=0, atol=1e-12)


def test_saliency_maps_bad_arguments():
    model, x = TwoBlockNet(), _images(n=1)
    with pytest.raises(ValueError, match="unknown methods"):
        saliency.saliency_maps(model, x, ["lime"])
    with pytest.raises(ValueError, match="dilate_layer4_"):
        saliency.saliency_maps(model, x, ["dilated_cam"])


def test_image_scores_per_image_and_the_lung_baselines():
    x, y, masks = lesion_images()
    lungs = []
    for m in masks:  # two "lungs": the top and bottom halves minus a centre band
        lung = np.zeros_like(m)
        lung[2:30] = True
        lung[34:62] = True
        lungs.append(lung)
    res = loc.image_scores(BrightnessNet(), x, masks, ("cam", "lung_prior", "correct_lung",
                           "layercam_layer3", "contrastive_cam", "cam_flip"), lung_masks=lungs, tolerance=4)
    assert res["skipped_methods"] == [] and len(res["area"]) == 8
    s = res["scores"]
    assert len(s["cam"]["ious"]) == 8 and len(s["cam"]["ious"][0]) == len(loc.THRESHOLDS)
    # correct lung: the 12x12 lesion (144 px) lies in one 28x64 half-lung (1792 px) -> energy 144/1792,
    # or less where the lesion pokes out of it
    assert max(s["correct_lung"]["energy"]) == pytest.approx(144 / 1792)
    assert max(s["lung_prior"]["energy"]) == pytest.approx(144 / 3584)
    assert s["cam"]["hit_0px"] == [True] * 8
    out = loc.evaluate_localization(BrightnessNet(), x, masks, lung_masks=lungs, tolerance=4)
    assert out["correct_lung"]["energy_over_area"] > out["lung_prior"]["energy_over_area"]
    assert out["cam"]["hit_0px"] == 1.0


def test_map_scores_with_a_precomputed_lesion_equal_those_with_the_mask():
    """image_scores computes each mask's distances and boxes once for every map: same numbers."""
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:20, 30:45] = True
    mask[40:44, 5:9] = True  # two lesions, two boxes
    lesion = loc.Lesion.of(mask)
    assert lesion.boxes == loc.mask_boxes(mask) and lesion.distance[15, 35] == 0 and lesion.distance[15, 50] == 6
    for _ in range(5):
        s = rng.random((64, 64)) ** 4
        assert loc.map_scores(s, lesion, thresholds=(0.3, 0.6)) == loc.map_scores(s, mask, thresholds=(0.3, 0.6))
    with pytest.raises(ValueError, match="differ in shape"):
        loc.map_scores(np.ones((32, 32)), lesion)
