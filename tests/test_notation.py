"""One symbol per quantity (the glossary's Notation table) in every page, docstring and template.

The CAM paper writes $f_k$ for the feature maps and $S_c$ for the class score; this package writes
$A_k$ and $z_c$ everywhere (the glossary says so once). A page or docstring that slips back to the
other symbols fails here, naming the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Symbols replaced by the glossary's: feature maps A_k (not f_k), logit z_c (not S_c or y_c).
OTHER_SYMBOLS = re.compile(r"(?<![A-Za-z\\])(f_k|f_\{k\}|S_c|S_\{c\})\b")
GLOSSARY = ROOT / "docs" / "glossary.md"


def _files():
    yield from (ROOT / "docs").rglob("*.md")
    yield from (ROOT / "lessons").rglob("*.md")
    yield from (ROOT / "lessons").rglob("*.py")
    yield from (ROOT / "pneumonia_cam").rglob("*.py")
    yield ROOT / "README.md"


def test_pages_docstrings_and_templates_use_the_glossarys_symbols():
    found = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "write $f_k$ for $A_k$" in line:
                continue  # where the glossary and the template name the paper's symbol
            for m in OTHER_SYMBOLS.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {m.group(0)} in {line.strip()[:100]}")
    assert not found, "use the glossary's symbols (A_k, z_c):\n" + "\n".join(found)


def test_the_glossary_defines_each_symbol_once():
    text = GLOSSARY.read_text(encoding="utf-8")
    table = text.split("## Notation", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| $")]
    for symbol in ("$A_k(x, y)$", "$F_k$", "$w^c_k$, $b_c$", "$z_c$", "$p_c$", "$M_c(x, y)$"):
        assert rows.count(symbol) == 1, symbol


def test_the_check_finds_the_other_symbols():
    assert OTHER_SYMBOLS.search(r"$\sum_k w^c_k f_k(x, y)$") and OTHER_SYMBOLS.search("where $S_c$ is")
    assert not OTHER_SYMBOLS.search(r"$M_c = \sum_k w^c_k A_k$, z_c, S(x, y), S_1")
