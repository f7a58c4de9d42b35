"""MkDocs hook: two touches to inline code in the rendered pages.

* Sphinx cross-reference roles in docstrings (``:func:`fit```, ``:class:`~pneumonia_cam.data.DataError```)
  would show as the text ":func:" followed by code; only the code is kept, and Sphinx's "~" shortens a
  dotted name to its last part, as Sphinx would show it.
* A long path in inline code (``pneumonia_cam/weighted_sum.py`` in a narrow table column) may break
  only after a "/" (a ``<wbr>`` there; extra.css stops breaks inside words), never mid-name.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")
_PATH_CODE = re.compile(r"<code>([^<]*/[^<]*)</code>")


def _plain(m: re.Match) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def _breakable(m: re.Match) -> str:
    return "<code>" + re.sub(r"/(?=.)", "/<wbr>", m.group(1)) + "</code>"


def on_page_content(html, page, config, files):
    html = _ROLE.sub(_plain, html)
    return _PATH_CODE.sub(_breakable, html)
