"""Lesson 03, step 1: the forward hook (``pneumonia_cam.steps.hook``) and the article's hook bug."""

import numpy as np
import pytest
import torch
import torchvision

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import article_cam_numpy, article_layout

# The functions under test: the package's, or yours with `--student` (lessons/03_cam/exercises.py).
ex = exercise_impl("03_cam")


class ArticleLayerActivations:
    """The article's hook class, reproduced faithfully (do not fix!): ``features`` is a *class*
    attribute, shared by every instance, and ``hook_fn`` appends to it on every forward pass."""

    features = []

    def __init__(self, model):
        self.hooks = []
        self.hooks.append(model.layer4.register_forward_hook(self.hook_fn))

    def hook_fn(self, module, input, output):
        self.features.append(output)

    def remove(self):
        for hook in self.hooks:
            hook.remove()


@pytest.fixture
def article_hook_class():
    """The article's class with its shared list emptied before and after the test (the list lives
    on the class, so without this, state would leak from one test into the next — the bug itself)."""
    ArticleLayerActivations.features.clear()
    yield ArticleLayerActivations
    ArticleLayerActivations.features.clear()


@pytest.mark.exercise("LayerActivations")
def test_hook_output_shape_resnet152_at_224():
    """The article's model: ResNet-152's layer4 gives (B, 2048, 7, 7) at 224 px (224 / 32 = 7)."""
    model = torchvision.models.resnet152(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), ex.LayerActivations(model.layer4) as acts:
        model(x)
    assert acts.features.shape == (1, 2048, 7, 7)
    assert torch.isfinite(acts.features).all()


@pytest.mark.exercise("LayerActivations")
def test_exactly_one_handle_while_active_and_none_after(cam_cnn):
    layer = cam_cnn.layer4
    assert len(layer._forward_hooks) == 0
    with ex.LayerActivations(layer) as acts:
        assert len(layer._forward_hooks) == 1
        with acts:  # entering again does not register a second hook
            assert len(layer._forward_hooks) == 1
        assert len(layer._forward_hooks) == 0  # the inner exit removed it
    assert len(layer._forward_hooks) == 0
    acts.remove()  # idempotent
    assert len(layer._forward_hooks) == 0


@pytest.mark.exercise("LayerActivations")
def test_hook_removed_even_when_the_forward_pass_fails(cam_cnn):
    acts = ex.LayerActivations(cam_cnn.layer4)
    with pytest.raises(RuntimeError, match="channels"):  # conv2d's error
        with acts:
            cam_cnn(torch.zeros(1, 5, 16, 16))  # wrong number of channels
    assert len(cam_cnn.layer4._forward_hooks) == 0


@pytest.mark.exercise("LayerActivations")
def test_features_are_per_instance_replaced_and_detached(cam_cnn):
    for p in cam_cnn.parameters():
        p.requires_grad_(True)  # even when autograd records, the stored copy carries no graph
    x1, x2 = torch.randn(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with ex.LayerActivations(cam_cnn.layer4) as a, ex.LayerActivations(cam_cnn.layer4) as b:
        cam_cnn(x1)
        first = a.features
        cam_cnn(x2)
    assert "features" in vars(a) and "features" in vars(b)  # stored on each instance...
    assert not hasattr(ex.LayerActivations, "features")  # ...and nothing on the class
    torch.testing.assert_close(a.features, b.features)  # both saw the same pass
    assert a.features.shape == (2, 8, 4, 4)  # replaced by the second pass, not appended
    torch.testing.assert_close(a.features, cam_cnn.layer4(x2).detach())
    assert not torch.equal(first, a.features)
    assert a.features.grad_fn is None and not a.features.requires_grad
    c = ex.LayerActivations(cam_cnn.layer4)
    assert c.features is None  # a new instance starts empty
    c.remove()


def test_article_hook_bug_shared_growing_list(cam_cnn, article_hook_class):
    """The article's class: one list for all instances, one more entry per forward pass."""
    x = torch.randn(1, 3, 16, 16)
    acts1 = article_hook_class(cam_cnn)
    cam_cnn(x)
    acts1.remove()
    acts2 = article_hook_class(cam_cnn)  # "a fresh hook for the next image"...
    assert len(acts2.features) == 1  # ...already holds the previous image's features
    assert acts1.features is acts2.features  # the very same list object
    cam_cnn(x)
    cam_cnn(x)
    assert len(acts2.features) == 3  # it grows with every forward pass (and keeps the tensors alive)
    acts2.remove()
    # Forgetting remove() stacks hooks: each pass is then appended once per live hook.
    article_hook_class(cam_cnn)
    article_hook_class(cam_cnn)
    assert len(cam_cnn.layer4._forward_hooks) == 2
    cam_cnn(x)
    assert len(article_hook_class.features) == 5
    cam_cnn.layer4._forward_hooks.clear()


@torch.no_grad()
def test_article_hook_bug_gives_every_image_the_first_images_cam(cam_cnn, article_hook_class):
    """The consequence: the article reads ``acts.features[0]``, which is the first image ever seen,
    so the second image is shown with the first image's CAM. Ours gives each image its own."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(2)]
    w = cam_cnn.fc[0].weight[1].numpy()

    def article_predict(img):  # the article's steps, one image at a time
        acts = article_hook_class(cam_cnn)
        cam_cnn(img)
        acts.remove()
        return article_cam_numpy(article_layout(acts.features[0]), w)

    def our_predict(img):
        with LayerActivations(cam_cnn.layer4) as acts:
            cam_cnn(img)
        return article_cam_numpy(article_layout(acts.features), w)

    article = [article_predict(img) for img in images]
    ours = [our_predict(img) for img in images]
    np.testing.assert_array_equal(article[0], ours[0])  # first image: fine
    np.testing.assert_array_equal(article[1], ours[0])  # second image: the first one's map (bug)
    assert np.abs(ours[1] - ours[0]).max() > 1e-3  # though its own map is different
