"""Run lesson tests against several student files in one process (torch is imported once).

    python tests/exercise_mutants/run_student.py SPEC.json OUT.json BASETEMP

SPEC is a list of ``{"name", "student", "args"}``; each entry becomes one
``pytest <args> --student <student>`` run, from the repository root. OUT maps each name to the run's
exit code, its collection errors, one record per test report (node id, outcome, the crash message,
the titles of its exercise sections) and the end of its terminal output.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest


class Recorder:
    """A pytest plugin that keeps what each test reported."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.errors: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr or "")
            self.reports.append({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                                 "message": message,
                                 "sections": [title for title, _ in report.sections if title.startswith("exercise ")]})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append(f"{report.nodeid}: {str(report.longrepr)[-500:]}")


def main(spec_path: str, out_path: str, basetemp: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    results = {}
    Path(basetemp).mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(spec):
        recorder, output = Recorder(), io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            # no:unraisableexception: its end-of-run gc.collect() calls cost ~0.4 s per run, most of a
            # mutant's run, and these short runs create no reference cycles worth finding.
            # "tb": null leaves pytest's traceback style alone: the student's short report.
            tb = run.get("tb", "--tb=line")
            code = pytest.main([*run["args"], "--student", run["student"], "-p", "no:cacheprovider",
                                "-p", "no:unraisableexception", *([tb] if tb else []), f"--basetemp={basetemp}/{i}"],
                               plugins=[recorder])
        results[run["name"]] = {"exit": int(code), "errors": recorder.errors, "reports": recorder.reports,
                                "output": output.getvalue()}  # whole: the summary line's place depends on the terminal width
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
