"""MkDocs hook: three touches to inline code in the rendered pages.

* A ``<figcaption>`` inside ``<figure markdown>`` is raw HTML to Python-Markdown, so a `` `command` ``
  in it would show its backticks: each ``<figcaption>`` without a ``markdown`` attribute gets
  ``markdown="span"``, and its inline Markdown renders.
* Sphinx cross-reference roles in docstrings (``:func:`fit```, ``:class:`~pneumonia_cam.support.images.DataError```)
  would show as the text ":func:" followed by code; only the code is kept, and Sphinx's "~" shortens a
  dotted name to its last part, as Sphinx would show it.
* Long inline code (``pneumonia_cam/steps/weighted_sum.py``, ``test_bench_cam.py::test_cam_overhead``
  in a narrow table column) may break only at a ``<wbr>``, never mid-name (extra.css): after a "/"
  or "::" anywhere, and, in a table cell's code of more than 16 characters, also before a "." or "_".
  Code blocks (``<pre>``) are left as they are: a ``<wbr>`` there would break their lines.
"""

from __future__ import annotations

import html as html_lib
import re

_FIGCAPTION = re.compile(r"<figcaption(?![^>]*\bmarkdown\b)([^>]*)>")
_PRE = re.compile(r"(<pre\b.*?</pre>)", re.DOTALL | re.IGNORECASE)
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")
_CODE = re.compile(r"<code>((?:[^<]|<wbr>)+)</code>")
_CELL = re.compile(r"(<t[dh]\b[^>]*>)(.*?)(</t[dh]>)", re.DOTALL)
_AFTER = re.compile(r"(/|::)(?=[^/:])")  # "a/b" -> "a/<wbr>b", "f.py::t" -> "f.py::<wbr>t"
_BEFORE = re.compile(r"(?<=[A-Za-z0-9)\]])([._])(?=[A-Za-z0-9])")  # "a.b_c" -> "a<wbr>.b<wbr>_c"
_LONG = 16


def on_page_markdown(markdown, page, config, files):
    return _FIGCAPTION.sub(r'<figcaption markdown="span"\1>', markdown)


def _plain(m: re.Match) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def _after(m: re.Match) -> str:
    return "<code>" + _AFTER.sub(r"\1<wbr>", m.group(1)) + "</code>"


def _before(m: re.Match) -> str:
    if len(html_lib.unescape(m.group(1).replace("<wbr>", ""))) <= _LONG:
        return m.group(0)
    return "<code>" + _BEFORE.sub(r"<wbr>\1", m.group(1)) + "</code>"


def on_page_content(html, page, config, files):
    # re.split with a group: the odd items are the <pre> blocks, kept as they are.
    parts = _PRE.split(html)
    for i in range(0, len(parts), 2):
        text = _CODE.sub(_after, _ROLE.sub(_plain, parts[i]))
        parts[i] = _CELL.sub(lambda m: m.group(1) + _CODE.sub(_before, m.group(2)) + m.group(3), text)
    return "".join(parts)
