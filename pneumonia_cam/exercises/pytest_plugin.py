"""The pytest side of exercise mode, enabled for every run by ``addopts`` in ``pyproject.toml``.

* ``--student PATH``: run the lessons' exercise tests against the student's files (a folder of
  ``<lesson>.py`` copies made by ``python -m pneumonia_cam.exercises start``, or one such file).
* ``@pytest.mark.exercise("name", ...)``: the test judges these exercises of its lesson (the folder
  it lives in). Under ``--student``, a failing one gets a report section naming the exercise and
  showing its hint; the exercise tests of a lesson without a student file are skipped, saying how to
  start it; and the summary says, per lesson, which exercises pass.
* A test that uses several exercises and takes the ``judged`` argument runs, under ``--student``,
  once per exercise, with only that one taken from the student's file (``ex.judging(judged)``); so
  each exercise is judged by its own tests. In a normal run it runs once, ``judged`` is ``None``.
* Under ``--student`` the report is short: per failing exercise, each failing test with a one-line
  reason and the exercise's hint (read from the lesson's template, whatever the student's file now
  says). ``-v`` or an explicit ``--tb=...`` brings back pytest's full tracebacks.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from pneumonia_cam.exercises import ACTIVE, EXERCISES, ExerciseError, Session, hints, student_files, template_path

#: Where a one-line reason stops: what follows is numpy's dump of the arrays.
_DUMP_STARTS = (" ACTUAL:", " x: array", " DESIRED:")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("exercises").addoption(
        "--student", metavar="PATH", default=None,
        help="run the lessons' exercise tests against your own code: a folder of <lesson>.py files "
             "(python -m pneumonia_cam.exercises start <lesson>) or one such file")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "exercise(*names): the test judges these exercises of its lesson (see --student)")
    student = config.getoption("student", None)
    try:
        files = None if student is None else student_files(student)
    except ExerciseError as err:
        raise pytest.UsageError(str(err)) from None
    config.stash[_STATE] = _State(Session(student=files))
    ACTIVE.append(config.stash[_STATE].session)
    # Short reports for students, unless they asked for more (-v, or --tb=long/short/...).
    if files is not None and config.option.tbstyle == "auto" and config.option.verbose <= 0:
        config.stash[_STATE].compact = True
        config.option.tbstyle = "no"
        config.option.reportchars = "sxX"  # skips stay counted and explained; failures are listed below


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state.session in ACTIVE:
        ACTIVE.remove(state.session)


class _State:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.items: dict[str, tuple[str, tuple[str, ...]]] = {}  # nodeid -> (lesson, exercise names)
        self.outcomes: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.reasons: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
        self.compact = False


_STATE = pytest.StashKey[_State]()


def _lesson_of(item: pytest.Item) -> str | None:
    for parent in Path(item.path).parents:
        if parent.name in EXERCISES:
            return parent.name
    return None


@pytest.fixture
def judged() -> str | None:
    """The one exercise a several-exercise test judges (``None``: all of them; see the module's docstring)."""
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "judged" not in metafunc.fixturenames or metafunc.config.getoption("student", None) is None:
        return
    names = tuple(dict.fromkeys(n for m in metafunc.definition.iter_markers("exercise") for n in m.args))
    if len(names) > 1:
        metafunc.parametrize("judged", [pytest.param(n, id=n) for n in names])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    for item in items:
        marks = list(item.iter_markers("exercise"))
        if not marks:
            continue
        lesson = _lesson_of(item)
        names = tuple(dict.fromkeys(n for m in marks for n in m.args))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("judged") in names:
            names = (callspec.params["judged"],)  # this copy judges one exercise only
        if lesson is None or not names or any(n not in EXERCISES[lesson] for n in names):
            raise pytest.UsageError(f"{item.nodeid}: exercise{names} is not an exercise of the lesson "
                                    f"folder {lesson}")
        state.items[item.nodeid] = (lesson, names)


def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash[_STATE]
    student = state.session.student
    if student is not None and item.nodeid in state.items:
        lesson = state.items[item.nodeid][0]
        if lesson not in student:
            folder = item.config.getoption("student")
            pytest.skip(f"no {lesson}.py in {folder}: python -m pneumonia_cam.exercises start {lesson} {folder}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    state = item.config.stash[_STATE]
    student = state.session.student
    if student is None or item.nodeid not in state.items:
        return report
    lesson, names = state.items[item.nodeid]
    if report.failed:
        path = student.get(lesson)
        lines = [f"{name}: {_hint(lesson, name)}" for name in names]
        report.sections.append((f"exercise {', '.join(names)} (lesson {lesson}, your file {path})",
                                "\n".join(lines)))
        test = item.nodeid.split("/")[-1] + ("" if report.when == "call" else f" (in {report.when})")
        for name in names:
            state.reasons[lesson][name].append((test, _one_line(report)))
    if report.when == "call" or report.outcome != "passed":
        for name in names:
            state.outcomes[lesson][name].append(report.outcome)
    return report


@cache
def _template_hints(lesson: str) -> dict[str, str]:
    """The hints of the lesson's template, read once per run: the student may have rewritten theirs."""
    return hints(template_path(lesson))


def _hint(lesson: str, name: str) -> str:
    return _template_hints(lesson).get(name) or f"see lessons/{lesson}/README.md"


def _one_line(report: pytest.TestReport) -> str:
    """The failure's reason on one line: the exception and its message, without numpy's array dumps."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    text = " ".join(text.split())
    for start in _DUMP_STARTS:
        text = text.split(start, 1)[0]
    return text if len(text) <= 240 else text[:237] + "..."


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if state.session.student is None:
        return
    if state.compact:
        for lesson, failed in state.reasons.items():
            for name in EXERCISES[lesson]:
                if name not in failed:
                    continue
                terminalreporter.write_line("")
                terminalreporter.write_line(f"exercise {name} (lesson {lesson}): {len(failed[name])} failing "
                                            f"test(s)", red=True, bold=True)
                for test, reason in failed[name]:
                    terminalreporter.write_line(f"  {test}: {reason}")
                terminalreporter.write_line(f"  hint: {_hint(lesson, name)}")
        if state.reasons:
            terminalreporter.write_line("(full tracebacks: add -v or --tb=long)")
    for lesson, ran in state.outcomes.items():
        if all(o == "skipped" for outcomes in ran.values() for o in outcomes):
            continue  # no student file for this lesson: the skip reasons say so
        names = list(EXERCISES[lesson])
        # An exercise passes when its tests ran, none failed (a GPU test may skip without CUDA).
        passing = [n for n in names if "passed" in ran.get(n, []) and "failed" not in ran.get(n, [])]
        failing = [n for n in names if any(o == "failed" for o in ran.get(n, []))]
        unchecked = [n for n in names if n not in passing and n not in failing]
        if len(passing) == len(names):
            line = f"lesson {lesson}: all {len(names)} exercises pass"
        else:
            line = f"lesson {lesson}: {len(passing)} of {len(names)} exercises pass"
            if failing:
                line += f"; failing: {', '.join(failing)}"
            if unchecked:
                line += f"; not run: {', '.join(unchecked)}"
        terminalreporter.write_line(line, green=len(passing) == len(names), bold=True)
