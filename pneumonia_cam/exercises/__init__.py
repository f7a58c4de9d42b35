"""Exercise mode: write the article's steps yourself, and let the lessons' own tests judge them.

Each lesson folder holds a template, ``lessons/<lesson>/exercises.py``: the steps of that lesson as
stubs with the package's names and signatures, each with its formula, shapes and a hint, and a body
that raises ``NotImplementedError``. ``python -m pneumonia_cam.exercises start 03_cam`` copies one
into a folder of yours (``my_exercises/03_cam.py``), and ``pytest lessons/03_cam --student
my_exercises`` runs the lesson's tests with your functions in place of the package's.

A lesson test reaches the implementation through :func:`exercise_impl`::

    ex = exercise_impl("03_cam")

    @pytest.mark.exercise("class_activation_map")
    def test_...():
        cam = ex.class_activation_map(features, weight, 1)

``ex.<name>`` is looked up at call time: the package's own function in a normal run, the student's
under ``--student`` (:mod:`pneumonia_cam.exercises.pytest_plugin`). Tests of the article's bugs and of
library behaviour are not exercises: they import the package directly.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

#: The exercises of each lesson, in the lesson's order: name -> the package module that implements it.
EXERCISES: dict[str, dict[str, str]] = {
    "01_gap": {
        "global_average_pool": "pneumonia_cam.steps.gap",
        "dense_head_params": "pneumonia_cam.steps.gap",
        "gap_head_params": "pneumonia_cam.steps.gap",
    },
    "02_transfer_learning": {
        "make_transforms": "pneumonia_cam.steps.data",
        "replace_head": "pneumonia_cam.steps.model",
        "train_mode": "pneumonia_cam.steps.model",
        "train_one_epoch": "pneumonia_cam.steps.fit",
        "evaluate": "pneumonia_cam.steps.fit",
    },
    "03_cam": {
        "LayerActivations": "pneumonia_cam.steps.hook",
        "class_activation_map": "pneumonia_cam.steps.weighted_sum",
        "zoom_article": "pneumonia_cam.steps.zoom",
        "upsample": "pneumonia_cam.steps.zoom",
        "denormalize": "pneumonia_cam.steps.overlay",
        "to_gray": "pneumonia_cam.steps.overlay",
        "show_cam_on_image": "pneumonia_cam.steps.overlay",
    },
    "04_localization": {
        "pointing_game": "pneumonia_cam.extensions.localization",
        "hit_0px": "pneumonia_cam.extensions.localization",
        "energy_pointing_game": "pneumonia_cam.extensions.localization",
        "correct_lung_map": "pneumonia_cam.extensions.localization",
    },
}

#: The repository's lesson folders (the templates live there, next to the tests that judge them).
LESSONS_DIR = Path(__file__).resolve().parents[2] / "lessons"


class ExerciseError(Exception):
    """A lesson or a student file that cannot be used; the message is one line that says what to do."""


def check_lesson(lesson: str) -> str:
    """Return ``lesson`` if it has exercises, else raise :class:`ExerciseError` naming the choices."""
    if lesson not in EXERCISES:
        raise ExerciseError(f"unknown lesson {lesson!r}; choose one of {', '.join(EXERCISES)}")
    return lesson


def template_path(lesson: str) -> Path:
    """``lessons/<lesson>/exercises.py``: the template of ``lesson``."""
    path = LESSONS_DIR / check_lesson(lesson) / "exercises.py"
    if not path.is_file():
        raise ExerciseError(f"template {path} not found; exercise mode needs a clone of the repository")
    return path


def hints(path: str | Path) -> dict[str, str]:
    """The hint of each top-level function or class of a template: its docstring's ``Hint:`` paragraph.

    Read with ``ast``, without importing the file.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node) or ""
            paragraph = doc.split("Hint:", 1)[1].split("\n\n", 1)[0] if "Hint:" in doc else ""
            out[node.name] = " ".join(paragraph.split())  # one line
    return out


def lesson_of_file(path: str | Path) -> str:
    """The lesson a student file belongs to: its ``LESSON = "..."`` line, or its name (``03_cam.py``)."""
    path = Path(path)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["LESSON"]
                and isinstance(node.value, ast.Constant) and node.value.value in EXERCISES):
            return node.value.value
    if path.stem in EXERCISES:
        return path.stem
    raise ExerciseError(f"{path}: cannot tell its lesson; name it <lesson>.py "
                        f"({', '.join(EXERCISES)}) or keep the template's LESSON line")


def student_files(path: str | Path) -> dict[str, Path]:
    """``--student PATH``: a folder of ``<lesson>.py`` copies, or one file -> ``{lesson: file}``."""
    path = Path(path)
    if path.is_file():
        return {lesson_of_file(path): path}
    if path.is_dir():
        return {lesson: path / f"{lesson}.py" for lesson in EXERCISES if (path / f"{lesson}.py").is_file()}
    raise ExerciseError(f"--student {path}: no such file or folder; "
                        f"create it with: python -m pneumonia_cam.exercises start <lesson> {path}")


@dataclass
class Session:
    """One pytest run's exercise settings (``student`` is None: the package's own code)."""

    student: dict[str, Path] | None = None
    modules: dict[str, ModuleType] = field(default_factory=dict)

    def module(self, lesson: str) -> ModuleType:
        """The student's module for ``lesson``, loaded by path once per run."""
        if lesson not in self.modules:
            path = (self.student or {}).get(lesson)
            if path is None:
                raise ExerciseError(f"no student file for lesson {lesson}")
            spec = importlib.util.spec_from_file_location(f"student_exercises_{lesson}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # a SyntaxError or ImportError fails the test that asked
            self.modules[lesson] = module
        return self.modules[lesson]


#: The sessions of the pytest runs in progress, innermost last (a run may start another in-process).
ACTIVE: list[Session] = []


class Implementation:
    """What ``exercise_impl(lesson)`` returns: ``.name`` resolves, at each access, to the package's
    object or, under ``--student``, to the student's."""

    def __init__(self, lesson: str, judged: str | None = None) -> None:
        self._lesson = check_lesson(lesson)
        self._judged = judged

    def judging(self, name: str | None) -> Implementation:
        """The same, except that only exercise ``name`` is the student's; every other name is the
        package's. A test that uses two exercises (``zoom_article`` beside ``upsample``) then judges
        one at a time: a correct ``zoom_article`` passes while ``upsample`` is still a stub. ``None``:
        no restriction.
        """
        if name is not None and name not in EXERCISES[self._lesson]:
            raise AttributeError(f"{name!r} is not an exercise of lesson {self._lesson}")
        return Implementation(self._lesson, name)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in EXERCISES[self._lesson]:
            raise AttributeError(f"{name!r} is not an exercise of lesson {self._lesson} "
                                 f"({', '.join(EXERCISES[self._lesson])})")
        session = ACTIVE[-1] if ACTIVE else None
        if session is None or session.student is None or (self._judged is not None and name != self._judged):
            return getattr(importlib.import_module(EXERCISES[self._lesson][name]), name)
        module = session.module(self._lesson)
        if not hasattr(module, name):
            raise AttributeError(f"{module.__file__} defines no {name}: copy its stub from "
                                 f"{template_path(self._lesson)}")
        return getattr(module, name)

    def __repr__(self) -> str:
        judged = f".judging({self._judged!r})" if self._judged else ""
        return f"exercise_impl({self._lesson!r}){judged}"


def exercise_impl(lesson: str) -> Implementation:
    """The implementation a lesson's exercise tests call: ``ex = exercise_impl("03_cam")``."""
    return Implementation(lesson)
