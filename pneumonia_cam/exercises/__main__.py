"""``python -m pneumonia_cam.exercises``: list the exercises, or start a lesson's in a folder of yours.

    python -m pneumonia_cam.exercises list
    python -m pneumonia_cam.exercises start 03_cam [DIR]     # DIR defaults to ./my_exercises

``start`` copies ``lessons/03_cam/exercises.py`` to ``DIR/03_cam.py`` and never overwrites a file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from pneumonia_cam.exercises import EXERCISES, LESSONS_DIR, ExerciseError, check_lesson, hints, template_path


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it (shorter commands to copy)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def start(lesson: str, folder: Path) -> int:
    """Copy the template of ``lesson`` to ``folder/<lesson>.py``; 1 if that file already exists."""
    src = template_path(check_lesson(lesson))
    dst = folder / f"{lesson}.py"
    if dst.exists():
        print(f"{_shown(dst)} already exists: not overwritten (rename or delete it to start over)")
        return 1
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    print(f"wrote {_shown(dst)}: fill in {', '.join(EXERCISES[lesson])}")
    print(f"check it with: pytest {_shown(LESSONS_DIR / lesson)} --student {_shown(folder)}")
    return 0


def list_exercises() -> int:
    for lesson, names in EXERCISES.items():
        found = hints(template_path(lesson))
        print(f"{lesson}  ({_shown(template_path(lesson))})")
        for i, name in enumerate(names, 1):
            print(f"  {i}. {name}: {found.get(name, '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pneumonia_cam.exercises", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the lessons and their exercises, in order")
    p = sub.add_parser("start", help="copy a lesson's exercise template into your folder")
    p.add_argument("lesson", help=", ".join(EXERCISES))
    p.add_argument("folder", nargs="?", default="my_exercises", type=Path, help="default: ./my_exercises")
    args = parser.parse_args(argv)
    try:
        return list_exercises() if args.command == "list" else start(args.lesson, args.folder)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
