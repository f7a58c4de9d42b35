"""Exercise mode is honest: templates fail every exercise test, the package passes them all, and each
plausible mistake in tests/exercise_mutants/ fails the tests that should catch it.

All the lesson runs happen in one subprocess (tests/exercise_mutants/run_student.py), so torch is
imported once for the whole file.
"""

from __future__ import annotations

import ast
import inspect
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pneumonia_cam.exercises import EXERCISES, hints, template_path
from pneumonia_cam.exercises.__main__ import main as exercises_cli

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = sorted((ROOT / "tests" / "exercise_mutants").glob("*/*.py"))
LESSON_ARGS = [f"lessons/{lesson}" for lesson in EXERCISES]


def _constants(path: Path) -> dict:
    """The module-level NAME = literal assignments of a file, read without importing it."""
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            value = ast.literal_eval(node.value) if not isinstance(node.value, ast.Call) else None
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            values = value if isinstance(node.targets[0], ast.Tuple) else [value]
            out.update({t.id: v for t, v in zip(targets, values)})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every lesson run of this file, done once: fresh templates, the reference, each mutant."""
    tmp = tmp_path_factory.mktemp("exercises")
    templates, reference = tmp / "templates", tmp / "reference"
    reference.mkdir()
    for lesson, names in EXERCISES.items():
        assert exercises_cli(["start", lesson, str(templates)]) == 0
        # The reference "student" hands in the package's own functions.
        lines = [f"from {EXERCISES[lesson][n]} import {n}  # noqa: F401" for n in names]
        (reference / f"{lesson}.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = [{"name": "templates", "student": str(templates), "args": [*LESSON_ARGS, "-m", "exercise"]},
            {"name": "reference", "student": str(reference), "args": [*LESSON_ARGS, "-m", "exercise"]}]
    # A student who has done zoom_article (and nothing else) and rewritten every docstring of the
    # template: zoom_article must pass on its own tests, and the hints still come from the template.
    partial = tmp / "partial"
    partial.mkdir()
    text = template_path("03_cam").read_text(encoding="utf-8").replace("Hint:", "My notes:")
    (partial / "03_cam.py").write_text(text + "\nfrom pneumonia_cam.steps.zoom import zoom_article  # noqa: E402,F401,F811\n",
                                       encoding="utf-8")
    spec.append({"name": "partial", "student": str(partial), "args": ["lessons/03_cam", "-m", "exercise", "-q"],
                 "tb": None})
    for path in MUTANTS:
        c = _constants(path)
        spec.append({"name": path.stem, "student": str(path),
                     "args": [f"lessons/{c['LESSON']}/{test}" for test in c["CAUGHT_BY"]]})
    (tmp / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/exercise_mutants/run_student.py"), str(tmp / "spec.json"),
                           str(tmp / "out.json"), str(tmp / "basetemp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text(encoding="utf-8"))


def _judged(nodeid: str, lesson: str) -> str | None:
    """The exercise a copy of a several-exercise test judges (``test_x[upsample]``), or None."""
    param = nodeid.split("[", 1)[1].rstrip("]") if "[" in nodeid else None
    return param if param in EXERCISES[lesson] else None


def _names(report: dict) -> list[str]:
    """The exercises a report's section names: 'exercise a, b (lesson ...)' -> ['a', 'b']."""
    assert len(report["sections"]) == 1, report
    return report["sections"][0].removeprefix("exercise ").split(" (lesson ")[0].split(", ")


# --------------------------------------------------------------------------------------------------
# The templates
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lesson", list(EXERCISES))
def test_template_has_the_exercises_in_order_with_hints_and_the_packages_signatures(lesson):
    path = template_path(lesson)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == list(EXERCISES[lesson])
    assert _constants(path)["LESSON"] == lesson
    assert all(len(h) > 20 for h in hints(path).values()), hints(path)
    spec = importlib.util.spec_from_file_location(f"template_{lesson}", path)
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    for name, module in EXERCISES[lesson].items():
        ours, theirs = getattr(template, name), getattr(importlib.import_module(module), name)
        ours = ours.__init__ if inspect.isclass(ours) else ours
        theirs = theirs.__init__ if inspect.isclass(theirs) else theirs
        a = list(inspect.signature(ours).parameters.values())
        b = list(inspect.signature(theirs).parameters.values())
        # The template may leave out trailing optional parameters (LayerActivations' keep_graph).
        assert [p.name for p in a] == [p.name for p in b[: len(a)]], name
        assert all(p.default is not inspect.Parameter.empty for p in b[len(a):]), name


def test_untouched_templates_fail_every_exercise_test_with_their_hint(runs):
    run = runs["templates"]
    assert run["errors"] == []
    failed = [r for r in run["reports"] if r["outcome"] == "failed"]
    skipped = [r for r in run["reports"] if r["outcome"] == "skipped"]
    assert all("CUDA" in r["message"] for r in skipped), skipped  # GPU variants only
    assert failed and len(failed) + len(skipped) == len(run["reports"])
    for r in failed:
        assert r["message"].startswith("NotImplementedError: exercise "), (r["nodeid"], r["message"])
        named = r["message"].removeprefix("NotImplementedError: exercise ").split(":")[0]
        assert named in _names(r), (r["nodeid"], named)
    judged = {n for r in failed for n in _names(r)}
    for lesson, names in EXERCISES.items():
        assert set(names) <= judged, lesson  # every exercise has tests
        assert f"lesson {lesson}: 0 of {len(names)} exercises pass" in run["output"]


def test_the_package_handed_in_as_a_student_passes_every_exercise_test(runs):
    run, templates = runs["reference"], runs["templates"]
    assert run["exit"] == 0 and run["errors"] == []
    assert {r["nodeid"] for r in run["reports"]} == {r["nodeid"] for r in templates["reports"]}
    assert all(r["outcome"] == "passed" or "CUDA" in r["message"] for r in run["reports"])
    for lesson, names in EXERCISES.items():
        assert f"lesson {lesson}: all {len(names)} exercises pass" in run["output"]


def test_each_exercise_is_judged_by_its_own_tests(runs):
    run = runs["partial"]
    assert run["errors"] == []
    zoom = [r for r in run["reports"] if _judged(r["nodeid"], "03_cam") == "zoom_article"]
    upsample = [r for r in run["reports"] if _judged(r["nodeid"], "03_cam") == "upsample"]
    assert zoom and all(r["outcome"] == "passed" for r in zoom), zoom
    assert upsample and all(r["outcome"] == "failed" for r in upsample)
    names = [n for n in EXERCISES["03_cam"] if n != "zoom_article"]
    assert f"lesson 03_cam: 1 of 7 exercises pass; failing: {', '.join(names)}" in run["output"]


def test_a_student_run_is_short_and_its_hints_come_from_the_template(runs):
    out, template = runs["partial"]["output"], hints(template_path("03_cam"))
    lines = out.splitlines()
    failed = [r for r in runs["partial"]["reports"] if r["outcome"] == "failed"]
    # Per failing exercise: a header, one line per failing test, its hint; no tracebacks, no arrays.
    for name in EXERCISES["03_cam"]:
        if name != "zoom_article":
            assert f"  hint: {template[name]}" in lines, name
    assert "My notes" not in out and "Traceback" not in out and "array(" not in out
    assert all(len(line) <= 320 for line in lines)
    assert len(lines) <= len(failed) + 3 * len(EXERCISES["03_cam"]) + 10, len(lines)
    assert "(full tracebacks: add -v or --tb=long)" in lines


def test_every_exercise_has_a_mutant():
    covered = {(c["LESSON"], c["EXERCISE"]) for c in map(_constants, MUTANTS)}
    assert {(lesson, name) for lesson, names in EXERCISES.items() for name in names} <= covered


@pytest.mark.parametrize("path", MUTANTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_plausible_mistake_fails_the_tests_that_should_catch_it(runs, path):
    c = _constants(path)
    run = runs[path.stem]
    assert run["errors"] == [] and run["exit"] == 1
    for test in c["CAUGHT_BY"]:
        # A test of two exercises runs once per exercise under --student (test[zoom_article],
        # test[upsample]); the copy that judges the other exercise uses the package's for this one.
        reports = [r for r in run["reports"] if r["nodeid"].split("[")[0].endswith(test)
                   and _judged(r["nodeid"], c["LESSON"]) in (None, c["EXERCISE"])]
        assert reports, test
        for r in reports:
            assert r["outcome"] == "failed", (test, r)
            # A wrong value, not a file that cannot be used.
            assert not re.match(r"(NotImplementedError|ImportError|ModuleNotFoundError|SyntaxError|NameError)",
                                r["message"]), (test, r["message"])
            assert c["EXERCISE"] in _names(r), (test, r["sections"])


# --------------------------------------------------------------------------------------------------
# The command and the site
# --------------------------------------------------------------------------------------------------
def test_start_copies_the_template_and_never_overwrites(tmp_path, capsys):
    folder = tmp_path / "mine"
    assert exercises_cli(["start", "03_cam", str(folder)]) == 0
    copy = folder / "03_cam.py"
    assert copy.read_bytes() == template_path("03_cam").read_bytes()
    assert f"--student {folder}" in capsys.readouterr().out
    copy.write_text("my work\n")
    assert exercises_cli(["start", "03_cam", str(folder)]) == 1
    assert copy.read_text() == "my work\n"
    assert "not overwritten" in capsys.readouterr().out


def test_bad_lesson_is_one_line_and_exit_2(capsys):
    assert exercises_cli(["start", "04_nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "01_gap" in err


def test_list_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "pneumonia_cam.exercises", "list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for names in EXERCISES.values():
        assert all(f". {n}: " in proc.stdout for n in names)


@pytest.mark.parametrize("lesson", list(EXERCISES))
def test_lesson_page_lists_the_exercises_with_the_templates_hints(lesson):
    page = (ROOT / "docs" / "lessons" / f"{lesson}.md").read_text(encoding="utf-8")
    section = page.split("## Write it yourself", 1)[1].split("\n## ", 1)[0]
    assert f"python -m pneumonia_cam.exercises start {lesson}" in section
    assert f"pytest lessons/{lesson} --student my_exercises" in section
    flat = " ".join(section.split())
    positions = [flat.index(f"`{name}`") for name in EXERCISES[lesson]]
    assert positions == sorted(positions)  # in the lesson's order
    for name, hint in hints(template_path(lesson)).items():
        assert hint in flat, name
