r"""Lesson 04, pool-the-map: a head that pools the class map (``pneumonia_cam.extensions.map_model.ClassMapPool``).

The article's head averages the features, then weighs them: $z_c = \sum_k w^c_k \bar A_k + b_c$,
which is the *mean* of the class map $M_c + b_c$. The pooled-map head keeps the map and changes only
the pooling: $z_c = \operatorname{pool}_{x,y}(M_c(x, y) + b_c)$ with pool = mean, log-sum-exp or the
top-k mean. These tests pin

1. mean pooling of the map *is* the article's GAP + linear head (same weights, same logits);
2. for every pooling the logit is the pooled CAM plus the bias, so the CAM stays exact, and pooling
   the *features* first (Wang et al.'s order) would not give it;
3. log-sum-exp goes to the mean as $r \to 0$ and to the max as $r \to \infty$, without overflow;
4. the top-k mean is the mean for $k = hw$ and the max for $k = 1$;
5. a checkpoint remembers its pooling (the state dict alone cannot);
6. bad settings are one-line errors, and ``--pooling`` is a flag of the train command.

Everything runs in float64 on tiny networks, against references written from the definitions.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from pneumonia_cam import train
from pneumonia_cam.extensions.gradcam import grad_cam
from pneumonia_cam.extensions.map_model import (
    POOLINGS,
    ClassMapPool,
    build_map_model,
    check_pooling,
    load_model,
    pool_cells,
    pool_class_map_,
    topk_count,
)
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.steps.weighted_sum import (
    cam_from_model,
    class_activation_map,
    head_linear,
)
from pneumonia_cam.support.checkpoint import CheckpointError, save_checkpoint
from pneumonia_cam.support.config import TrainConfig

TOL = 1e-10
# The three heads under test, with parameters that make each pooling differ from the others.
HEADS = [("mean", {}), ("lse", {"lse_r": 3.0}), ("topk", {"topk_fraction": 0.25})]


# --- references, written from the definitions (NumPy, float64) ---------------------------------------
def ref_pool(cells: np.ndarray, pooling: str, lse_r: float = 10.0, topk_fraction: float = 0.1) -> float:
    """One map's cells (n,) pooled the textbook way (no stabilization: the values here are small)."""
    cells = np.asarray(cells, dtype=np.float64).ravel()
    if pooling == "mean":
        return float(cells.mean())
    if pooling == "lse":
        return float(np.log(np.mean(np.exp(lse_r * cells))) / lse_r)
    k = max(1, math.ceil(round(topk_fraction * cells.size, 9)))
    return float(np.sort(cells)[::-1][:k].mean())


def _pooled_net(cam_cnn: nn.Module, pooling: str, **params) -> nn.Module:
    """A float64 TinyCamNet (4x4 grid at 16 px) with distinct non-zero biases and the pooled-map head."""
    net = copy.deepcopy(cam_cnn).double()
    with torch.no_grad():
        net.fc[0].bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    return pool_class_map_(net, pooling, **params).eval()


def _images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_probs (B, C), logits (B, C): the head's output, features (B, K, h, w): layer4's output)."""
    with torch.no_grad(), LayerActivations(model.layer4) as acts, LayerActivations(head_linear(model)) as head:
        log_probs = model(x)
    return log_probs, head.features, acts.features


# --- the 2-channel 2x2 case, by hand -----------------------------------------------------------------
# A_1 = [[1, 0], [0, 0]], A_2 = [[0, 2], [0, 4]];  w^0 = (1, -1), w^1 = (0.5, 2);  b = (0.1, -0.3).
# M_0 + b_0 = A_1 - A_2 + 0.1         = [[1.1, -1.9], [0.1, -3.9]]
# M_1 + b_1 = 0.5 A_1 + 2 A_2 - 0.3   = [[0.2,  3.7], [-0.3, 7.7]]
HAND_A = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]]], dtype=torch.float64)  # (1, 2, 2, 2)
HAND_W = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)  # (C, K) = (2, 2)
HAND_B = torch.tensor([0.1, -0.3], dtype=torch.float64)
HAND_MAPS = [[1.1, -1.9, 0.1, -3.9], [0.2, 3.7, -0.3, 7.7]]  # M_c + b_c, cells in row-major order


def _hand_head(pooling: str, **params) -> ClassMapPool:
    head = ClassMapPool(2, 2, pooling, **params).double()
    with torch.no_grad():
        head.weight.copy_(HAND_W)
        head.bias.copy_(HAND_B)
    return head


@pytest.mark.parametrize("pooling, params, expected", [
    ("mean", {}, [(1.1 - 1.9 + 0.1 - 3.9) / 4, (0.2 + 3.7 - 0.3 + 7.7) / 4]),  # -1.15, 2.825
    ("topk", {"topk_fraction": 0.25}, [1.1, 7.7]),  # k = 1: the max
    ("topk", {"topk_fraction": 0.5}, [(1.1 + 0.1) / 2, (7.7 + 3.7) / 2]),  # k = 2: 0.6, 5.7
    ("lse", {"lse_r": 1.0}, [math.log((math.exp(1.1) + math.exp(-1.9) + math.exp(0.1) + math.exp(-3.9)) / 4),
                             math.log((math.exp(0.2) + math.exp(3.7) + math.exp(-0.3) + math.exp(7.7)) / 4)]),
])
def test_hand_computed_2x2(pooling, params, expected):
    head = _hand_head(pooling, **params)
    assert torch.allclose(head.class_map(HAND_A), torch.tensor([HAND_MAPS], dtype=torch.float64), atol=1e-12)
    z = head(HAND_A)  # (1, 2, 2, 2) -> (1, 2)
    assert torch.allclose(z, torch.tensor([expected], dtype=torch.float64), atol=1e-12), (z, expected)
    # torchvision hands the head flattened features, (B, K*h*w): the same logits.
    assert torch.allclose(head(torch.flatten(HAND_A, 1)), z, atol=0)


def test_hand_2x2_pooling_the_features_first_gives_other_logits():
    """Wang et al.'s order (pool each A_k, then the linear layer) is a different head for max pooling:
    max A_1 = 1, max A_2 = 4, so z_0 = 1 - 4 + 0.1 = -2.9, not the max of M_0 + b_0 = 1.1."""
    feature_first = HAND_W @ HAND_A.flatten(2).amax(-1)[0] + HAND_B  # (2, 2) @ (2,) + (2,)
    assert torch.allclose(feature_first, torch.tensor([-2.9, 0.5 * 1 + 2 * 4 - 0.3], dtype=torch.float64))
    assert not torch.allclose(_hand_head("topk", topk_fraction=0.25)(HAND_A)[0], feature_first)


# --- 1. mean pooling is the article's head ---------------------------------------------------------------
def test_mean_pooled_map_is_the_articles_gap_linear_head(cam_cnn):
    """Same weights: GAP then Linear (the article) and Linear on every cell then mean give the same logits."""
    article = copy.deepcopy(cam_cnn).double()
    with torch.no_grad():
        article.fc[0].bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    pooled = pool_class_map_(copy.deepcopy(article), "mean")
    assert isinstance(pooled.avgpool, nn.Identity) and isinstance(pooled.fc[0], ClassMapPool)
    x = _images()
    lp_article, z_article, _ = _logits_and_features(article, x)
    lp_pooled, z_pooled, _ = _logits_and_features(pooled, x)
    assert torch.allclose(z_pooled, z_article, atol=1e-12, rtol=0)
    assert torch.allclose(lp_pooled, lp_article, atol=1e-12, rtol=0)


def test_default_build_is_the_article_model_and_pooling_changes_only_the_head():
    torch.manual_seed(0)
    article = build_model("resnet18", weights="none")
    after_article = torch.rand(4)  # the random state build_model leaves behind
    torch.manual_seed(0)
    lse = build_map_model("resnet18", weights="none", pooling="lse")
    after_lse = torch.rand(4)
    # The default is untouched: torchvision's GAP and the Sequential(Linear, LogSoftmax) head.
    assert isinstance(article.avgpool, nn.AdaptiveAvgPool2d) and type(article.fc[0]) is nn.Linear
    assert isinstance(article.fc[1], nn.LogSoftmax)
    # The pooled-map model: same parameter names and values (backbone and head init), same random
    # state afterwards, so runs that differ only in --pooling start from the same network.
    assert isinstance(lse.avgpool, nn.Identity) and isinstance(lse.fc[0], ClassMapPool)
    sa, sl = article.state_dict(), lse.state_dict()
    assert list(sa) == list(sl) and all(torch.equal(sa[k], sl[k]) for k in sa)
    assert torch.equal(after_article, after_lse)


# --- 2. the CAM stays exact --------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling, params", HEADS)
def test_logit_is_pooled_cam_plus_bias(cam_cnn, pooling, params):
    model = _pooled_net(cam_cnn, pooling, **params)
    x = _images()
    log_probs, logits, feats = _logits_and_features(model, x)
    b = head_linear(model).bias.detach()
    for c in range(2):
        cams_b, lp = cam_from_model(model, x, class_idx=c, with_bias=True)  # (B, h, w) = M_c + b_c
        cams, _ = cam_from_model(model, x, class_idx=c)  # (B, h, w) = M_c
        assert torch.equal(lp, log_probs)
        ref = torch.tensor([ref_pool(m.numpy(), pooling, **params) for m in cams_b], dtype=torch.float64)
        assert torch.allclose(logits[:, c], ref, atol=TOL, rtol=0)
        # Every pooling here commutes with a constant, so the bias may be added before or after.
        ref_no_b = torch.tensor([ref_pool(m.numpy(), pooling, **params) for m in cams], dtype=torch.float64)
        assert torch.allclose(logits[:, c], ref_no_b + b[c], atol=TOL, rtol=0)
    assert torch.allclose(log_probs, torch.log_softmax(logits, 1), atol=TOL, rtol=0)
    # The same maps through the batched CAM of lesson 03, from the hooked features.
    cam1 = class_activation_map(feats, head_linear(model).weight, 1, bias=b)
    assert torch.allclose(model.fc[0].class_map(feats)[:, 1], cam1.flatten(1), atol=TOL, rtol=0)


@pytest.mark.parametrize("pooling, params", HEADS[1:])
def test_nonlinear_pooling_is_not_the_mean_of_the_cam(cam_cnn, pooling, params):
    """What a wrong head would give: for lse and top-k, neither the CAM's mean (the GAP identity) nor
    the pooled features put through the linear layer is the logit; the checks above tell them apart."""
    model = _pooled_net(cam_cnn, pooling, **params)
    _, logits, feats = _logits_and_features(model, _images())
    W, b = head_linear(model).weight.detach(), head_linear(model).bias.detach()
    gap_logits = feats.mean((2, 3)) @ W.T + b  # (B, K) @ (K, C) -> (B, C)
    pooled_feats = torch.stack([pool_cells(f.flatten(1), pooling, **params) for f in feats])  # (B, K)
    assert (logits - gap_logits).abs().max() > 1e-3
    assert (logits - (pooled_feats @ W.T + b)).abs().max() > 1e-3


def test_build_model_lse_head_works_with_cam_gradcam_and_channels_last(cam_images_f64):
    torch.manual_seed(0)
    model = build_map_model("resnet18", weights="none", pooling="lse", lse_r=4.0).double().eval()
    x = cam_images_f64  # (2, 3, 64, 64) -> 2x2 layer4 grid
    head = head_linear(model)
    assert head is model.fc[0] and head.weight.shape == (2, 512) and head.bias.shape == (2,)
    log_probs, logits, _ = _logits_and_features(model, x)
    for c in range(2):
        cams, _ = cam_from_model(model, x, class_idx=c, with_bias=True)
        ref = [ref_pool(m.numpy(), "lse", lse_r=4.0) for m in cams]
        assert torch.allclose(logits[:, c], torch.tensor(ref, dtype=torch.float64), atol=TOL, rtol=0)
    gc = grad_cam(model, model.layer4, x)  # hooks the head's output as the logit
    assert gc.shape == (2, 2, 2) and torch.isfinite(gc).all()
    # NHWC memory: torch.flatten still orders the cells as (K, h, w), so the head un-flattens correctly.
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(nhwc(x.to(memory_format=torch.channels_last)), log_probs, atol=TOL, rtol=0)


@pytest.mark.parametrize("pooling, params", HEADS[1:])
def test_pooled_map_head_trains_the_backbone_and_head(cam_cnn, pooling, params):
    model = _pooled_net(cam_cnn, pooling, **params).train()
    loss = nn.NLLLoss()(model(_images()), torch.tensor([0, 1, 1]))
    loss.backward()
    for p in (model.fc[0].weight, model.fc[0].bias, model.layer4[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


# --- 3. log-sum-exp between mean and max ---------------------------------------------------------------
def test_lse_goes_from_mean_to_max():
    g = torch.Generator().manual_seed(0)
    maps = 5 * torch.randn(3, 2, 16, generator=g, dtype=torch.float64)  # (B, C, n): values up to ~15
    mean, mx = maps.mean(-1), maps.amax(-1)
    # r -> 0: lse_r = mean + (r/2) Var + O(r^2)
    small = pool_cells(maps, "lse", lse_r=1e-6)
    assert torch.allclose(small, mean, atol=1e-4, rtol=0)
    assert torch.allclose(small, mean + 0.5e-6 * maps.var(-1, unbiased=False), atol=1e-8, rtol=0)
    # r -> infinity: max - log(n)/r <= lse_r <= max. r S reaches ~1.5e4, where e^{r S} is inf in float64.
    large = pool_cells(maps, "lse", lse_r=1e3)
    assert torch.isfinite(large).all()
    assert (large <= mx + 1e-12).all() and (large >= mx - math.log(16) / 1e3 - 1e-12).all()
    # And in between: increasing in r.
    rs = [0.1, 1.0, 10.0, 100.0]
    values = torch.stack([pool_cells(maps, "lse", lse_r=r) for r in rs])  # (4, B, C)
    assert (values.diff(dim=0) > 0).all()


def test_lse_head_at_small_r_is_the_mean_head(cam_cnn):
    x = _images()
    _, z_mean, _ = _logits_and_features(_pooled_net(cam_cnn, "mean"), x)
    _, z_lse, _ = _logits_and_features(_pooled_net(cam_cnn, "lse", lse_r=1e-7), x)
    assert torch.allclose(z_lse, z_mean, atol=1e-6, rtol=0)


# --- 4. top-k between max and mean ---------------------------------------------------------------------
def test_topk_is_mean_for_all_cells_and_max_for_one():
    maps = torch.randn(3, 2, 49, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(pool_cells(maps, "topk", topk_fraction=1.0), maps.mean(-1), atol=1e-12, rtol=0)
    for tiny in (1 / 49, 1e-9):
        assert torch.equal(pool_cells(maps, "topk", topk_fraction=tiny), maps.amax(-1))
    top5 = maps.sort(-1, descending=True).values[..., :5].mean(-1)
    assert torch.allclose(pool_cells(maps, "topk", topk_fraction=0.1), top5, atol=1e-12, rtol=0)


@pytest.mark.parametrize("fraction, cells, k", [
    (1.0, 49, 49), (0.1, 49, 5), (0.1, 196, 20), (1e-9, 49, 1), (0.5, 4, 2), (0.25, 4, 1),
    (0.28, 25, 7), (0.14, 50, 7),  # 7.000000000000001 in floating point: still 7 cells, not 8
])
def test_topk_count(fraction, cells, k):
    assert topk_count(fraction, cells) == k


# --- 5. a checkpoint remembers its pooling -------------------------------------------------------------
@pytest.mark.parametrize("pooling, params", [("lse", {"lse_r": 5.0}), ("topk", {"topk_fraction": 0.5})])
def test_checkpoint_reload_keeps_the_pooling(tmp_path, pooling, params):
    torch.manual_seed(0)
    model = build_map_model("resnet18", weights="none", pooling=pooling, **params).eval()
    cfg = TrainConfig(pooling=pooling, **params).to_dict()
    path = save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": cfg,
                                                  "classes": ["NORMAL", "PNEUMONIA"], "metrics": {}})
    loaded, _ = load_model(path)
    head = loaded.fc[0]
    assert isinstance(head, ClassMapPool) and head.pooling == pooling and isinstance(loaded.avgpool, nn.Identity)
    assert (head.lse_r, head.topk_fraction) == (params.get("lse_r", 10.0), params.get("topk_fraction", 0.1))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
        # The state dict has the article's keys (fc.0.weight, fc.0.bias): it loads into a mean model
        # without complaint, and that model computes something else. Only the config tells them apart.
        article = build_model("resnet18", weights="none").eval()
        article.load_state_dict(model.state_dict())
        wrong = article(x)
    torch.testing.assert_close(got, expected)
    assert (wrong - expected).abs().max() > 1e-4


def test_checkpoint_with_a_bad_pooling_is_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none")
    path = save_checkpoint(tmp_path / "bad.pt", {"model": model.state_dict(), "classes": ["NORMAL", "PNEUMONIA"],
                                                 "config": {"arch": "resnet18", "pooling": "max"}})
    with pytest.raises(CheckpointError, match="unknown pooling 'max'") as err:
        load_model(path)
    assert "\n" not in str(err.value)


# --- 6. bad settings, and the flag ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"pooling": "max"}, "choose one of mean, lse, topk"),
    ({"pooling": "lse", "lse_r": 0.0}, "lse_r must be a finite number > 0"),
    ({"pooling": "lse", "lse_r": -1.0}, "lse_r must be"),
    ({"pooling": "lse", "lse_r": float("nan")}, "lse_r must be"),
    ({"pooling": "lse", "lse_r": float("inf")}, "lse_r must be"),
    ({"pooling": "topk", "topk_fraction": 0.0}, r"topk_fraction must be in \(0, 1\]"),
    ({"pooling": "topk", "topk_fraction": 1.5}, "topk_fraction must be"),
    ({"pooling": "topk", "topk_fraction": 1.0 + 1e-9}, "topk_fraction must be"),
    ({"pooling": "topk", "topk_fraction": float("nan")}, "topk_fraction must be"),
])
def test_bad_pooling_settings_are_one_line_errors(kwargs, message):
    for make in (lambda: check_pooling(**kwargs), lambda: ClassMapPool(8, 2, **kwargs),
                 lambda: build_map_model("resnet18", weights="none", **kwargs)):
        with pytest.raises(ValueError, match=message) as err:
            make()
        assert "\n" not in str(err.value)


def test_pooled_head_refuses_pooled_features():
    with pytest.raises(ValueError, match="avgpool = nn.Identity"):
        ClassMapPool(8, 2, "lse")(torch.zeros(2, 7))  # 7 is not a multiple of K = 8


def test_train_help_lists_the_pooling_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--pooling", "lse", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--pooling {" + ",".join(POOLINGS) + "}" in out
    assert "--lse-r" in out and "--topk-fraction" in out


@pytest.mark.parametrize("args, message", [
    (["--pooling", "lse", "--lse-r", "0"], "--lse-r must be a finite number > 0"),
    (["--pooling", "topk", "--topk-fraction", "1.5"], "--topk-fraction must be in (0, 1]"),
    (["--pooling", "lse", "--freeze-backbone", "--cache-features"], "--cache-features needs --pooling mean"),
])
def test_train_rejects_bad_pooling_before_training(args, message, capsys, monkeypatch, tmp_path):
    # Every case must fail validation; if one slipped through, fail instead of training.
    monkeypatch.setattr(train.pipeline, "run", lambda *a, **k: pytest.fail("validation let the run start"))
    assert train.main(args + ["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_train_rejects_an_unknown_pooling(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--pooling", "max"])
    assert exit_.value.code == 2
    assert "invalid choice: 'max'" in capsys.readouterr().err
