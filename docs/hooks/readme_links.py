"""MkDocs hook: the links of an included lesson README keep working on its docs page.

A lesson page (`docs/lessons/03_cam.md`) includes `lessons/03_cam/README.md` with pymdownx.snippets.
The README's relative links are written for its own folder, so that they work when the repository is
browsed: `[the tests](test_hook.py)`, `[lesson 2](../02_transfer_learning/README.md)`,
`![grid](../../docs/figures/cam_grid.png)`. On the docs page they would point somewhere else, and the
strict build would fail. So, on a page that includes a `README.md`, each relative link or image that
is not a documentation file is resolved again from the README's folder, before MkDocs checks links:

* a file under `docs/`: a link to it from the page (MkDocs then checks it like any other link);
* a README that a docs page includes: a link to that page;
* any other file or folder of the repository (code, tests): its repository path as inline code,
  since the site is served offline and does not serve the repository;
* anything else is left alone, and the strict build reports it as broken.

It also lets a page include a README in two parts, so that the page's own sections (the code) go
between the lesson and its closing sections: `--8<-- "lessons/03_cam/README.md:body"` is the README up
to its first closing heading (`## Run ...`, `## Summary` or `## Exercises`), and `...README.md:tail`
the rest. A README that marks its own snippet sections `[start:body]`/`[start:tail]` keeps them.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as etree

from markdown import Extension
from markdown.treeprocessors import Treeprocessor
from markdown.util import HTML_PLACEHOLDER_RE

# A snippet line that includes a README: `--8<-- "lessons/03_cam/README.md"`.
_INCLUDE = re.compile(r"""^[ \t]*-+8<-+[ \t]+["']?([^"'\s:]*README\.md)(?::[\w:-]*)?["']?[ \t]*$""", re.MULTILINE)
# `--8<-- "path/README.md:body"` or `:tail`: the two parts of a README (see the module docstring).
_PART = re.compile(r"""^(?P<lead>[ \t]*-+8<-+[ \t]+)(?P<q>["']?)(?P<path>[^"'\s:]*README\.md):(?P<part>body|tail)(?P=q)[ \t]*$""",
                   re.MULTILINE)
_CLOSING = re.compile(r"^##[ \t]+(Run\b|Summary\b|Exercises\b)", re.IGNORECASE)

_state: dict = {"root": None, "docs": None, "page_dir": "", "readme_dirs": [], "readme_pages": {}}


def on_config(config):
    _state["root"] = Path(config.config_file_path).resolve().parent
    _state["docs"] = Path(config.docs_dir).resolve()
    config.markdown_extensions.append(_ReadmeLinksExtension())
    return config


def on_files(files, config):
    """Map each included README (repository path) to the docs page that includes it."""
    pages = {}
    for file in files.documentation_pages():
        text = Path(file.abs_src_path).read_text(encoding="utf-8")
        for readme in _INCLUDE.findall(text):
            pages[posixpath.normpath(readme)] = file.src_uri
    _state["readme_pages"] = pages
    return files


def on_page_markdown(markdown, page, config, files):
    """Remember which page is rendered next and the folders of the READMEs it includes; turn
    `README.md:body` / `README.md:tail` into the line ranges pymdownx.snippets understands."""
    _state["page_dir"] = posixpath.dirname(page.file.src_uri)
    _state["readme_dirs"] = [posixpath.dirname(posixpath.normpath(r)) for r in _INCLUDE.findall(markdown)]
    return _PART.sub(_line_range, markdown)


def _line_range(m: re.Match) -> str:
    path = _state["root"] / m["path"]
    if not path.is_file():
        return m.group(0)  # pymdownx.snippets reports the missing file
    lines = path.read_text(encoding="utf-8").splitlines()
    if f"[start:{m['part']}]" in "\n".join(lines):
        return m.group(0)  # the README marks its own sections
    # The first closing heading outside a code fence starts the tail.
    split, fenced = len(lines), False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and _CLOSING.match(line):
            split = i
            break
    first, last = (1, split) if m["part"] == "body" else (split + 1, len(lines))
    if first > last:
        return ""  # nothing in that part
    return f"{m['lead']}{m['q']}{m['path']}:{first}:{last}{m['q']}"


class _ReadmeLinksExtension(Extension):
    def extendMarkdown(self, md):  # noqa: N802 - Python-Markdown's name
        # After the inline patterns (20) made the links, before MkDocs' link check ("relpath", 0).
        md.treeprocessors.register(_ReadmeLinks(md), "pneumonia_cam_readme_links", 3)


class _ReadmeLinks(Treeprocessor):
    def run(self, root: etree.Element) -> None:
        if not _state["readme_dirs"]:
            return
        for el in list(root.iter()):
            attr = {"a": "href", "img": "src"}.get(el.tag)
            url = el.get(attr) if attr else None
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
                continue
            path = unquote(parts.path)
            in_docs = posixpath.normpath(posixpath.join(_state["page_dir"], path))
            if not in_docs.startswith("../") and (_state["docs"] / in_docs).exists():
                continue  # a documentation file already: MkDocs handles it
            fragment = f"#{parts.fragment}" if parts.fragment else ""
            for readme_dir in _state["readme_dirs"]:
                target = (_state["root"] / readme_dir / path).resolve()
                if target.exists() and _state["root"] in target.parents:
                    self._rewrite(el, attr, target, fragment)
                    break

    def _visible_text(self, el: etree.Element) -> str:
        """The element's text, with inline code that an extension stashed away put back."""
        def unstash(m: re.Match) -> str:
            html = self.md.htmlStash.rawHtmlBlocks[int(m.group(1))]
            return re.sub(r"<[^>]+>", "", str(html))

        return HTML_PLACEHOLDER_RE.sub(unstash, "".join(el.itertext())).strip()

    def _rewrite(self, el: etree.Element, attr: str, target: Path, fragment: str) -> None:
        docs, root, page_dir = _state["docs"], _state["root"], _state["page_dir"]
        repo_path = target.relative_to(root).as_posix()
        if target.is_dir() and (target / "README.md").is_file():
            repo_path = f"{repo_path}/README.md"
        if docs in target.parents:
            doc_path = target.relative_to(docs).as_posix()
            el.set(attr, posixpath.relpath(doc_path, page_dir or ".") + fragment)
        elif repo_path in _state["readme_pages"]:
            page = _state["readme_pages"][repo_path]
            el.set(attr, posixpath.relpath(page, page_dir or ".") + fragment)
        elif el.tag == "a":
            # A repository file the offline site does not serve: show where it is.
            shown = self._visible_text(el)
            del el.attrib["href"]
            if shown in (repo_path, posixpath.basename(repo_path), target.name):
                for child in list(el):
                    el.remove(child)
                el.tag, el.text = "code", repo_path
            else:
                el.tag = "span"
                code = etree.SubElement(el, "code")
                code.text = repo_path
                last = el[-2] if len(el) > 1 else None
                if last is not None:
                    last.tail = (last.tail or "") + " ("
                else:
                    el.text = (el.text or "") + " ("
                code.tail = ")"
