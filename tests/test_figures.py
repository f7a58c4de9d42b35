"""One source for every result figure: ``docs/figures/results.json``.

The tables the pages include are written from it (``docs/figures/results_tables.py``), and every
figure a page quotes in its text is checked here against it: change a number in the JSON, or on a
page, and this fails, naming the page and the text it expected.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def _tables_module():
    spec = importlib.util.spec_from_file_location("results_tables", FIGURES / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLES = _tables_module()
R = TABLES.load()


CAM = "cam (the article's)"  # the CAM's row name in the study tables


def _flat(text: str) -> str:
    """Whitespace collapsed, so that a figure may wrap across lines of the Markdown source."""
    return " ".join(text.split())


def pct(x: float) -> str:
    return f"{round(100 * x)} %"


def mean(cell: str) -> str:
    """``"0.650 ± 0.100 [0.604, 0.690]"`` -> ``"0.650"``."""
    return cell.split(" ")[0]


def mean_sd(cell: str) -> str:
    return cell.split(" [")[0]


def three(xs, fmt="{:.3f}", sep=", ", last=None) -> str:
    items = [fmt.format(x) for x in xs]
    return sep.join(items[:-1]) + (last if last is not None else sep) + items[-1]


def _copies() -> list[tuple[str, str]]:
    demo, seeds, early = R["demo"], R["demo_seeds"], R["study_early_160"]
    t, t160, t128 = seeds["table"], early["table"], R["study_early_128"]["table"]
    cam, grad, lc3, dil = (t[CAM], t["gradcam_layer3"], t["layercam_layer3"], t["dilated_cam"])
    gauss, rand, lung, right = (t["*gaussian* (baseline)"], t["*random* (baseline)"], t["*lung_prior* (baseline)"],
                                t["*correct_lung* (baseline)"])
    vt = demo["metrics"]["val_threshold"]
    hits = seeds["cam_hit15"]
    walls = demo["wall_s_empty_cache"] + demo["wall_s_seeds_1_2"]
    z4 = R["demo_zen4"]
    copies = [
        # the home page
        ("docs/index.md", f"on {pct(hits[0])} of them; seeds 1 and 2 give {pct(hits[1])} and {pct(hits[2])}"),
        ("docs/index.md", f"With the threshold chosen on validation (Youden's J), {vt['threshold']:.3f}: test accuracy "
                          f"{vt['test_accuracy']:.3f}, sensitivity {vt['test_sensitivity']:.3f}, specificity "
                          f"{vt['test_specificity']:.3f}. Seeds 1 and 2 give test accuracy "
                          f"{seeds['test_accuracy'][1]:.3f} and {seeds['test_accuracy'][2]:.3f}."),
        ("docs/index.md", '--8<-- "docs/figures/demo_table.md"'),
        # the localization page
        ("docs/localization.md", '--8<-- "docs/figures/study_demo_table.md"'),
        ("docs/localization.md", '--8<-- "docs/figures/study_early_160_table.md"'),
        ("docs/localization.md", '--8<-- "docs/figures/three_recipes_table.md"'),
        ("docs/localization.md", f"the three seed runs took {seeds['seconds_per_run'][0]}-{seeds['seconds_per_run'][1]} "
                                 f"s each, the scoring {seeds['scoring_s']} s"),
        ("docs/localization.md", f"Test accuracy of the three models: {three(seeds['test_accuracy'])}."),
        ("docs/localization.md", f"on {pct(float(mean(cam['hit@15px'])))} of the images on average, but "
                                 f"{three(hits, '{:.0%}', last=' and ').replace('%', ' %')} for the three seeds"),
        ("docs/localization.md", f"the centred Gaussian ({mean(gauss['hit@15px'])}) and the random map "
                                 f"({mean(rand['hit@15px'])})"),
        ("docs/localization.md", f"(LayerCAM at `layer3` {mean(lc3['hit@15px'])}, Grad-CAM at `layer3` "
                                 f"{mean(grad['hit@15px'])}, the dilated CAM {mean(dil['hit@15px'])}, against "
                                 f"{mean(cam['hit@15px'])} for the 7x7 CAM)"),
        ("docs/localization.md", f"puts {mean(right['energy/area'])} times the lesion's area share on the lesion, and "
                                 f"its box reaches IoU {mean(right['Zhou-box IoU'])}"),
        ("docs/localization.md", f"reaches {mean(grad['energy/area'])}x and IoU {mean(grad['Zhou-box IoU'])}, about "
                                 f"what a map uniform over both lungs scores ({mean(lung['energy/area'])}x, "
                                 f"{mean(lung['Zhou-box IoU'])}); the article's 7x7 CAM reaches "
                                 f"{mean(cam['energy/area'])}x"),
        ("docs/localization.md", f"({early['seconds']} s, training included). Test accuracy of the three models: "
                                 f"{three(early['test_accuracy'])}."),
        ("docs/localization.md", f"lesion on {three(early['cam_hit15'], '{:.0%}', last=' and ').replace('%', ' %')} of "
                                 f"the images for the three seeds"),
        ("docs/localization.md", f"| cam | mean (the article's) | {mean_sd(t160[CAM]['hit@15px'])} | "
                                 f"{mean_sd(t160[CAM]['hit@0px'])} |"),
        ("docs/localization.md", f"| gradcam_layer3 | mean (the article's) | {mean_sd(t160['gradcam_layer3']['hit@15px'])} |"),
        ("docs/localization.md", f"| layercam_layer34 | mean (the article's) | "
                                 f"{mean_sd(t160['layercam_layer34']['hit@15px'])} |"),
        ("docs/localization.md", f"instead of {three(early['test_accuracy'], last=' and ')}"),
        # lesson 2
        ("lessons/02_transfer_learning/README.md",
         f"the demo reaches test accuracy {three(seeds['test_accuracy'], last=' and ')} (ROC AUC "
         f"{three(seeds['test_auc'])})"),
        ("lessons/02_transfer_learning/README.md",
         f"{three(R['study_early_128']['test_accuracy'], last=' and ')} with epoch 4 at 224 px too"),
        ("lessons/02_transfer_learning/README.md",
         f"the CAM's pointing game is {mean(cam['hit@15px'])} against {mean(t128[CAM]['hit@15px'])} "
         f"with epoch 4 at 224 px, Grad-CAM's at `layer3` {mean(grad['hit@15px'])} against "
         f"{mean(t128['gradcam_layer3']['hit@15px'])}"),
        # the run page and the README
        ("docs/run.md", f"**{walls[0]} s and {walls[1]} s** (two runs; seeds 1 and 2: {walls[2]} s, {walls[3]} s)"),
        ("docs/run.md", f"**{z4['wall_s_empty_cache']} s** (one run; {z4['timing_total_s']} s in its own "
                        f"`timing.total_s`; test accuracy {z4['test_accuracy']:.3f}"),
        ("docs/run.md", f"the demo's recipe measured {z4['wall_s_empty_cache']} s there"),
        ("README.md", f"({min(walls)}-{max(walls)} s on a 2-core AMD EPYC Zen 5)"),
    ]
    return copies


COPIES = _copies()


@pytest.mark.parametrize("page, text", COPIES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COPIES)])
def test_each_page_quotes_the_source(page, text):
    assert _flat(text) in _flat((ROOT / page).read_text(encoding="utf-8")), f"{page} should say: {text}"


@pytest.mark.parametrize("name", sorted(TABLES.tables(R)))
def test_included_tables_are_written_from_the_source(name):
    on_disk = (FIGURES / name).read_text(encoding="utf-8")
    assert on_disk == TABLES.tables(R)[name], f"run: python docs/figures/results_tables.py ({name} is stale)"


def test_every_record_names_its_command_and_machine():
    for key, record in R.items():
        if key.startswith("_"):
            continue
        assert record.get("command", "").startswith("python -m pneumonia_cam."), key
        assert re.search(r"\b(AMD|Intel|NVIDIA)\b", record.get("machine", "")), key


def test_a_changed_figure_is_caught(tmp_path):
    # The check is not vacuous: the home page's seed figures, altered in the source, no longer match.
    page = (ROOT / "docs/index.md").read_text(encoding="utf-8")
    hits = R["demo_seeds"]["cam_hit15"]
    wrong = f"on {pct(hits[0] + 0.01)} of them; seeds 1 and 2 give {pct(hits[1])} and {pct(hits[2])}"
    assert _flat(wrong) not in _flat(page)
