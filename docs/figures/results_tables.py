"""The result tables the pages include, written from their one source, ``docs/figures/results.json``.

    python docs/figures/results_tables.py          # rewrites docs/figures/*_table.md

``results.json`` records the figures of the runs the pages quote (each with its command and machine);
the pages include these tables with ``--8<--`` and quote single figures in their text, and
``tests/test_figures.py`` fails when a table here or a figure on a page differs from the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "results.json"
METRICS = ("hit@15px", "hit@0px", "energy/area", "Zhou-box IoU", "mIoU@val-t")


def load() -> dict:
    return json.loads(SOURCE.read_text(encoding="utf-8"))


def study_table(study: dict) -> str:
    """A study's table: one row per map, then the baselines; mean ± sd over seeds [bootstrap interval]."""
    lines = ["| map | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, cells in study["table"].items():
        lines.append(f"| {name} | " + " | ".join(cells[m] for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def demo_table(demo: dict) -> str:
    """The demo run's val and test metrics."""
    lines = ["| split | n | accuracy | sensitivity | specificity | ROC AUC |", "|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        m = demo["metrics"][split]
        lines.append(f"| {split} | {m['n']} | {m['accuracy']:.3f} | {m['sensitivity']:.3f} | "
                     f"{m['specificity']:.3f} | {m['auc']:.4f} |")
    return "\n".join(lines) + "\n"


def three_recipes_table(results: dict) -> str:
    """The CAM and Grad-CAM at ``layer3`` of three recipes that differ only in the early epochs' size."""
    lines = ["| px, epochs 1-5 | test accuracy | cam hit@15 | cam hit@0 | gradcam_layer3 hit@15 | its energy/area |",
             "|---|---|---|---|---|---|"]
    for key, sizes in (("study_early_160", "160, 160, 160, 224, 224"), ("study_early_128", "128, 128, 128, 224, 224"),
                       ("demo_seeds", "128, 128, 128, 176, 224 (demo)")):
        study = results[key]
        cam, grad = study["table"]["cam (the article's)"], study["table"]["gradcam_layer3"]
        mean_sd = lambda cell: cell.split(" [")[0]  # noqa: E731 - the mean ± sd, without the interval
        acc = ", ".join(f"{a:.3f}" for a in study["test_accuracy"])
        lines.append(f"| {sizes} | {acc} | {mean_sd(cam['hit@15px'])} | {mean_sd(cam['hit@0px'])} | "
                     f"{mean_sd(grad['hit@15px'])} | {mean_sd(grad['energy/area'])} |")
    return "\n".join(lines) + "\n"


def tables(results: dict) -> dict[str, str]:
    """File name -> content, for every table the pages include."""
    return {"demo_table.md": demo_table(results["demo"]),
            "study_demo_table.md": study_table(results["demo_seeds"]),
            "study_early_160_table.md": study_table(results["study_early_160"]),
            "three_recipes_table.md": three_recipes_table(results)}


def main() -> int:
    for name, text in tables(load()).items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
