"""Mistake: no optimizer.zero_grad(): every step uses the gradients of all the batches so far."""

from pneumonia_cam.steps.data import make_transforms  # noqa: F401
from pneumonia_cam.steps.fit import evaluate  # noqa: F401
from pneumonia_cam.steps.model import replace_head, train_mode

LESSON = "02_transfer_learning"
EXERCISE = "train_one_epoch"
CAUGHT_BY = ["test_fit.py::test_fit_matches_the_articles_loop_in_float64",
             "test_fit.py::test_train_one_epoch_trains_the_head_and_keeps_frozen_batchnorm_frozen"]


def train_one_epoch(model, loader, criterion, optimizer, device, precision="fp32", channels_last=False,
                    progress=False, desc="train"):
    train_mode(model)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        log_p = model(x)
        loss = criterion(log_p, y)
        loss.backward()
        optimizer.step()
        loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
        correct += (log_p.argmax(1) == y).sum().item()
    return {"loss": loss_sum / n, "acc": correct / n, "n": n}
