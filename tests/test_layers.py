"""The package's imports point one way: down the layers a reader meets them in.

From the top: the commands (``train``, ``cam``, ``study``, ``pipeline``, the ``exercises`` package),
then ``extensions/`` (beyond the article), then ``steps/`` (the article's steps), then ``support/``
(what makes them run anywhere), then the package root (``CLASSES``, ``SPLITS``). A module may import
from its own layer or any layer below it, never from one above; and a step never imports a later
step of the article. Every ``import`` counts, also one inside a function.

The imports are read with ``ast``, nothing is imported, so a violation is reported as the file, the
line and the import, even where importing would work.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pneumonia_cam"

#: Layer of each top-level part of the package, lowest first; anything else is a command.
LAYERS = {"": 0, "support": 1, "steps": 2, "extensions": 3}
COMMANDS = 4
LAYER_NAMES = {0: "the package root", 1: "support/", 2: "steps/", 3: "extensions/", 4: "the commands"}
#: The article's steps in the order it teaches them (and the README's reading order).
STEP_ORDER = ("gap", "data", "model", "fit", "metrics", "hook", "weighted_sum", "zoom", "overlay")


def module_name(package: Path, path: Path) -> str:
    """``<package>/steps/model.py`` -> ``pneumonia_cam.steps.model``; ``__init__.py`` names its package."""
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a dotted module name inside the package."""
    parts = module.split(".")[1:]
    if not parts:
        return LAYERS[""]
    if parts[0] in LAYERS:
        return LAYERS[parts[0]]
    return COMMANDS


def imported_modules(package: Path, path: Path) -> list[tuple[int, str, str]]:
    """``(line, module imported, source text)`` for every import of the package in ``path``.

    ``from pneumonia_cam.steps import data`` imports the module ``pneumonia_cam.steps.data`` (a name
    that is a submodule); ``from pneumonia_cam.steps.data import X`` imports ``pneumonia_cam.steps.data``.
    Relative imports are resolved against the module's own package.
    """
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    here = module_name(package, path)
    is_init = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                pkg = here.split(".") if is_init else here.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                sub_path = package.parent.joinpath(*sub.split("."))
                is_module = sub_path.with_suffix(".py").is_file() or (sub_path / "__init__.py").is_file()
                targets.append(sub if is_module else base)
        else:
            continue
        text = ast.get_source_segment(source, node) or ""
        found += [(node.lineno, t, " ".join(text.split())) for t in dict.fromkeys(targets)
                  if t == package.name or t.startswith(package.name + ".")]
    return found


def upward_imports(package: Path) -> list[str]:
    """One line per import that points up the layers, or from a step to a later step."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        here = module_name(package, path)
        for line, target, text in imported_modules(package, path):
            where = f"{path.relative_to(package.parent)}:{line}: {text}"
            if layer(target) > layer(here):
                problems.append(f"{where} -- {LAYER_NAMES[layer(here)]} imports {target}, "
                                f"which is in {LAYER_NAMES[layer(target)]}, a layer above")
            elif here.split(".")[1:2] == ["steps"] == target.split(".")[1:2]:
                mine, theirs = here.split(".")[2:3], target.split(".")[2:3]
                if mine and theirs and mine[0] in STEP_ORDER and theirs[0] in STEP_ORDER \
                        and STEP_ORDER.index(theirs[0]) > STEP_ORDER.index(mine[0]):
                    problems.append(f"{where} -- step {mine[0]} imports {theirs[0]}, a later step of the article")
    return problems


def test_every_import_points_down_the_layers():
    problems = upward_imports(PACKAGE)
    assert not problems, f"{len(problems)} import(s) point up:\n" + "\n".join(problems)


def test_every_module_of_the_package_is_read():
    # The rule only means something if the walk sees the modules: each layer has some, and every
    # step of the reading order is a module of steps/.
    names = {module_name(PACKAGE, p) for p in PACKAGE.rglob("*.py")}
    assert {layer(n) for n in names} == set(LAYER_NAMES)
    assert {f"pneumonia_cam.steps.{s}" for s in STEP_ORDER} <= names


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pneumonia_cam"
    for name in ("", "support", "steps", "extensions"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("name, text, culprit", [
    ("support/checkpoint.py", "from pneumonia_cam.steps.model import build_model\n", "pneumonia_cam.steps.model"),
    ("steps/overlay.py", "def f():\n    from pneumonia_cam.extensions import gradcam\n", "pneumonia_cam.extensions.gradcam"),
    ("support/report.py", "import pneumonia_cam.pipeline\n", "pneumonia_cam.pipeline"),
    ("steps/model.py", "from . import weighted_sum\n", "weighted_sum, a later step"),
    ("extensions/gradcam.py", "from ..train import main\n", "pneumonia_cam.train"),
])
def test_an_upward_import_is_named_with_its_file_and_line(tmp_path, name, text, culprit):
    package = _package(tmp_path, {
        "steps/model.py": "", "steps/weighted_sum.py": "", "extensions/gradcam.py": "", "train.py": "",
        "pipeline.py": "", name: text,
    })
    (problem,) = upward_imports(package)
    line = 2 if text.startswith("def") else 1
    assert problem.startswith(f"pneumonia_cam/{name}:{line}: ") and culprit in problem


def test_imports_that_point_down_pass(tmp_path):
    package = _package(tmp_path, {
        "support/weights.py": "import pneumonia_cam\nfrom pneumonia_cam import CLASSES\n",
        "steps/model.py": "from pneumonia_cam.support.weights import load_backbone\n",
        "steps/weighted_sum.py": "from .model import build_model\n",
        "extensions/map_model.py": "from pneumonia_cam.steps.model import build_model\n",
        "pipeline.py": "from pneumonia_cam.extensions import map_model\nfrom pneumonia_cam import train\n",
        "train.py": "from pneumonia_cam import pipeline\n",
    })
    assert upward_imports(package) == []
