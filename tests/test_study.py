"""``python -m pneumonia_cam.study`` end to end on a tiny configuration: files, table, resume, and the
mean / sd computed from the per-seed values."""

import json
import statistics

import numpy as np
import pytest

from pneumonia_cam import study

TINY = ("--phantom-size 64 --phantom-n-train 16 --phantom-n-val 8 --phantom-n-test 8 --image-size 64 "
        "--epochs 1 --batch-size 8 --precision fp32 --device cpu --workers 0 --no-progress")


@pytest.fixture
def study_args(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # phantoms generated here, not in ~/.cache
    return ["--seeds", "0", "1", "--out-dir", str(tmp_path / "runs"), "--name", "s", "--train-args", TINY,
            "--resamples", "200", "--no-progress"]


def test_study_end_to_end_and_resume(study_args, tmp_path, monkeypatch, capsys):
    assert study.main(study_args) == 0
    folder = tmp_path / "runs" / "s"
    for k in (0, 1):
        assert (folder / f"seed{k}" / "metrics.json").is_file()
        assert (folder / f"seed{k}" / study.SCORES_FILE).is_file()
    res = json.loads((folder / "study.json").read_text())
    assert res["runs"] == {"0": "trained", "1": "trained"}
    rows = list(study.METHODS) + list(study.BASELINES)
    assert set(res["summary"]) == set(rows) and res["n_test_images"] == 4
    assert set(res["test_accuracy"]) == {"seed0", "seed1"}
    assert res["machine"]["torch"] and res["command"].startswith("python -m pneumonia_cam.study")
    for m in rows:
        for col in res["columns"]:
            s = res["summary"][m][col]
            values = [res["per_seed"][f"seed{k}"][m][col] for k in (0, 1)]
            assert s["per_seed"] == values
            assert s["mean"] == pytest.approx(statistics.mean(values))
            assert s["sd"] == pytest.approx(statistics.stdev(values))
            assert s["ci95"][0] <= s["ci95"][1]
    # the two seeds train different models: their CAMs differ somewhere
    assert any(res["per_seed"]["seed0"]["cam"][c] != res["per_seed"]["seed1"]["cam"][c] for c in res["columns"])
    # baselines that know nothing of the model score the same for every seed
    for col in res["columns"]:
        assert res["summary"]["correct_lung"][col]["sd"] == 0.0
    # uniform over the right lung knows more than uniform over both
    energy = {m: res["summary"][m]["energy_over_area"]["mean"] for m in ("correct_lung", "lung_prior")}
    assert energy["correct_lung"] > energy["lung_prior"]
    table = (folder / "study.md").read_text()
    assert "| map | hit@15px | hit@0px | energy/area | Zhou-box IoU | mIoU@val-t |" in table
    assert table.index("| layercam_layer34 |") < table.index("| *gaussian* (baseline) |")
    assert " ± " in table and "Command: `python -m pneumonia_cam.study" in table
    # the figure: cam and the map with the highest mean energy/area, named on stdout
    energy = {m: res["summary"][m]["energy_over_area"]["mean"] for m in res["methods"]}
    best = max(energy, key=energy.get)
    assert f"maps.png: {', '.join(dict.fromkeys(['cam', best]))} ({best} has" in capsys.readouterr().out
    figure = folder / study.FIGURE_FILE
    assert figure.is_file()
    figure.unlink()

    # A second invocation trains and scores nothing: it reads the runs and the cached scores.
    def boom(*a, **k):
        raise AssertionError("trained or scored again")

    monkeypatch.setattr(study.pipeline, "run", boom)
    monkeypatch.setattr(study.loc, "image_scores", boom)
    assert study.main(study_args) == 0
    again = json.loads((folder / "study.json").read_text())
    assert again["runs"] == {"0": "reused", "1": "reused"}
    assert again["summary"] == res["summary"]
    assert figure.is_file()  # drawn again, from the reused run, without scoring
    figure.unlink()
    assert study.main([*study_args, "--no-figure"]) == 0 and not figure.exists()


def test_maps_figure_shows_the_scored_maps(study_args, tmp_path):
    """One row per lesion test image (4 in the tiny study), the X-ray then one column per method,
    and each drawn map is the one that was scored: its pointing game and energy give seed 0's
    cached per-image scores back."""
    args = ["--seeds", "0", *study_args[3:]]
    assert study.main([*args, "--figure-methods", "cam", "gradcam_layer3"]) == 0
    res = json.loads((tmp_path / "runs" / "s" / "study.json").read_text())
    cfg = study.run_config(study.build_study_parser().parse_args(args), 0)
    run_dir = tmp_path / "runs" / "s" / "seed0"
    fig = study.maps_figure(run_dir, cfg, res, ["cam", "gradcam_layer3"])
    n = res["n_test_images"]
    assert len(fig.axes) == n * 3 + 1  # n rows of (X-ray, 2 maps), one colorbar
    assert fig.axes[1].get_title().startswith("cam\nhit@15px")
    root, datasets = study.pipeline.load_data(cfg, progress=False)
    _, masks, _ = study.lesion_split(cfg, datasets["test"], root)
    scored = json.loads((run_dir / study.SCORES_FILE).read_text())["methods"]
    for j, m in ((1, "cam"), (2, "gradcam_layer3")):
        for i in range(n):
            ax = fig.axes[3 * i + j]
            drawn = np.asarray(ax.images[1].get_array(), dtype=float)  # the jet layer, (H, W)
            assert drawn.shape == masks[i].shape and len(ax.collections) == 1  # map and lesion outline
            assert study.loc.pointing_game(drawn, masks[i]) == scored[m]["test"]["hit_15px"][i]
            assert study.loc.energy_pointing_game(drawn, masks[i]) == pytest.approx(
                scored[m]["test"]["energy"][i], abs=1e-5)


def test_study_rescores_only_what_is_missing(study_args, tmp_path, monkeypatch):
    args = ["--seeds", "0", *study_args[3:]]  # one seed
    assert study.main(args) == 0
    path = tmp_path / "runs" / "s" / "seed0" / study.SCORES_FILE
    cache = json.loads(path.read_text())
    before = cache["methods"].pop("cam_flip")
    path.write_text(json.dumps(cache))
    seen = []
    real = study.loc.image_scores
    monkeypatch.setattr(study.loc, "image_scores", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    assert study.main(args) == 0
    assert seen == [["cam_flip"], ["cam_flip"]]  # val and test, that method only
    assert json.loads(path.read_text())["methods"]["cam_flip"] == before  # the same numbers again
    # killed after its last epoch, before metrics.json: the run is resumed from last.pt, not retrained
    (path.parent / "metrics.json").unlink()
    assert study.main(args) == 0
    assert json.loads((path.parent.parent / "study.json").read_text())["runs"] == {"0": "resumed"}


@pytest.mark.parametrize("extra, message", [
    (["--train-args", "--seed 3"], "--train-args may not set --seed"),
    (["--train-args", "--epochs 0"], "--epochs must be >= 1"),
    (["--train-args=--no-such-flag"], "--train-args: unrecognized"),
    (["--seeds", "1", "1"], "--seeds must differ"),
    (["--figure-methods", "cam", "lime"], "--figure-methods: unknown lime; choose from cam,"),
])
def test_study_misuse_is_one_line_exit_2(tmp_path, capsys, extra, message):
    assert study.main(["--out-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "study").exists()


def test_bootstrap_of_the_pooled_seeds_brackets_the_mean():
    from pneumonia_cam.extensions.localization import bootstrap_ci

    v = np.random.default_rng(0).random((2, 50))
    lo, hi = bootstrap_ci(v, n_resamples=500)
    assert lo < v.mean() < hi
