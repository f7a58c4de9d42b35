"""The tutorial site, checked the way a reader meets it.

`mkdocs build --strict` builds the site into a temporary folder; a threaded `http.server` serves it on
127.0.0.1 (an ephemeral port); headless Chromium (Debian's `chromium`) opens the home page and the CAM
lesson with every outside host unresolvable, and the test drives it over the Chrome DevTools Protocol
(a websocket, `websocket-client`) to check that:

* the math rendered: every `.arithmatex` element holds KaTeX output, none is a `.katex-error`, and the
  KaTeX fonts loaded from the site;
* every image loaded (`naturalWidth > 0`);
* no request left 127.0.0.1, none failed, none got an HTTP error; no script threw;
* the search (its index and web worker are files of the site) finds a word;
* the layout holds at 1280 px on every page: no formula is wider than its box (KaTeX cannot wrap a
  display formula: it would be cut off), no table scrolls sideways (hiding columns), no text outside
  code shows a literal backtick or `*` (Markdown left unrendered) or raw LaTeX (`$$`, `\\(`), no table
  has an empty header row, no API signature runs off its box;
* on the API page, each Returns table has one row per returned thing, each with the start of its
  description: a multi-line Returns entry whose continuation lines are not indented becomes
  several rows, each a fragment.

It saves full-page screenshots (light palette, and the home page in the dark one; the first
12,000 px of the API page, and the viewport at a few of its functions) under the pytest
temporary folder, and also under `$PNEUMONIA_CAM_SCREENSHOTS` when that is set, and prints where.
The browser tests skip only when no Chromium can be found, and fail instead in CI (`CI` set): `.ci/run`
installs Debian's `chromium`.
The other tests here need no browser: the strict build itself, no remote asset in the built HTML or
CSS, the API page's long signatures formatted (by ruff, through mkdocstrings), the home page's quickstart equal to README.md's, and every test named on the pitfalls page
existing.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WIDTH, VIEW_HEIGHT, MAX_SHOT_HEIGHT = 1280, 900, 12000


# --- the built site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`mkdocs build --strict` into a temporary folder (from the repository root: snippet paths
    are relative to it). Fails with mkdocs' own output when the build fails."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_site_builds_strict_with_every_page(site):
    pages = ["index.html", "lessons/01_gap/index.html", "lessons/02_transfer_learning/index.html",
             "lessons/03_cam/index.html", "pitfalls/index.html", "real_data/index.html",
             "localization/index.html", "benchmarks/index.html", "api/index.html"]
    missing = [p for p in pages if not (site / p).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    # The lesson pages include real files: the code blocks carry the source file's name as title.
    cam = (site / "lessons/03_cam/index.html").read_text(encoding="utf-8")
    assert 'class="filename">pneumonia_cam/steps/hook.py<' in cam and ">LayerActivations<" in cam


_REMOTE_ATTR = re.compile(
    r"<(?:script|img|iframe|source|video|audio|embed)\b[^>]*\bsrc=[\"']?(?:https?:)?//"
    r"|<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>",
    re.IGNORECASE,
)
_REMOTE_CSS = re.compile(r"url\(\s*[\"']?(?:https?:)?//|@import\s+[\"']?(?:url\()?[\"']?(?:https?:)?//", re.I)


def test_built_site_loads_nothing_from_outside(site):
    """Static half of the offline check: no page or stylesheet names a remote script, style, font or
    image (links a reader may click are fine). The browser test below checks it live."""
    offenders = []
    for path in site.rglob("*.html"):
        for m in _REMOTE_ATTR.finditer(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(site)}: {m.group(0)[:120]}")
    for path in site.rglob("*.css"):
        for m in _REMOTE_CSS.finditer(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(f"{path.relative_to(site)}: {m.group(0)}")
    assert not offenders, "remote assets in the built site:\n" + "\n".join(offenders)


_SIGNATURE = re.compile(r'<div class="[^"]*\bdoc-signature\b[^"]*"><pre>(.*?)</pre>', re.DOTALL)


def test_api_signatures_are_formatted(site):
    """mkdocstrings formats a long signature one parameter a line only when ruff (or black) is
    installed (the dev extra has ruff); without it every signature is one line, cut off at the
    column's edge. So no signature longer than mkdocstrings' line length (60) stays on one line."""
    import html

    page = (site / "api/index.html").read_text(encoding="utf-8")
    texts = [html.unescape(re.sub(r"<[^>]+>", "", m)).strip() for m in _SIGNATURE.findall(page)]
    assert len(texts) >= 50, f"expected the package's signatures, found {len(texts)}"
    one_line = [t[:70] for t in texts if "\n" not in t and len(t) > 80]
    assert not one_line, f"signatures left on one line (is ruff installed?): {one_line}"


# --- the pages' claims about the repository -------------------------------------------------------


def _first_bash_block_after(text: str, heading: str) -> str:
    after = text.split(heading, 1)[1]
    m = re.search(r"```bash\n(.*?)```", after, re.DOTALL)
    assert m, f"no ```bash block after {heading!r}"
    return m.group(1).strip()


def test_home_quickstart_is_the_readme_quickstart():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    assert _first_bash_block_after(home, "## Quickstart") == _first_bash_block_after(readme, "## Quickstart")


_TEST_ID = re.compile(r"`((?:lessons|tests)/[\w/.-]+\.py)::(\w+)`")


def test_pitfalls_page_names_existing_tests():
    """Each pitfall links to the test that shows it, as `path::test_name`; each must exist."""
    text = (DOCS / "pitfalls.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert len(sections) >= 9, "the page should keep its nine pitfalls"
    problems = []
    for section in sections:
        title = section.splitlines()[0]
        ids = _TEST_ID.findall(section)
        if not ids:
            problems.append(f"{title!r}: names no test as `path::test_name`")
        for rel, name in ids:
            path = ROOT / rel
            if not path.is_file():
                problems.append(f"{title!r}: {rel} does not exist")
            elif not re.search(rf"^\s*def {name}\(", path.read_text(encoding="utf-8"), re.MULTILINE):
                problems.append(f"{title!r}: {rel} has no test {name}")
    assert not problems, "\n".join(problems)


def test_included_readme_links_are_rewritten_for_the_docs_page(tmp_path):
    """docs/hooks/readme_links.py on a tiny project: a lesson README's links, written for its own
    folder, still resolve (or turn into repository paths) on the page that includes it, and the
    README can be included in two parts around the page's own sections."""
    (tmp_path / "lessons/x").mkdir(parents=True)
    (tmp_path / "lessons/y").mkdir(parents=True)
    (tmp_path / "docs/lessons").mkdir(parents=True)
    (tmp_path / "docs/figures").mkdir(parents=True)
    (tmp_path / "lessons/x/test_x.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "lessons/x/README.md").write_text(
        "# X\n\nSee [the tests](test_x.py), [lesson Y](../y/README.md#part), [`test_x.py`](test_x.py).\n\n"
        "![a figure](../../docs/figures/f.png)\n\n```text\n## Summary inside a code block\n```\n\n"
        "## Summary\n\nThe end.\n")
    (tmp_path / "lessons/y/README.md").write_text("# Y\n\n## Part\n\ntext\n")
    Image.new("L", (4, 3)).save(tmp_path / "docs/figures/f.png")
    (tmp_path / "docs/index.md").write_text("# Home\n")
    (tmp_path / "docs/lessons/x.md").write_text(
        '--8<-- "lessons/x/README.md:body"\n\n## Middle\n\n--8<-- "lessons/x/README.md:tail"\n')
    (tmp_path / "docs/lessons/y.md").write_text('--8<-- "lessons/y/README.md"\n')
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nstrict: true\ntheme: mkdocs\n"
        f"hooks: [{DOCS / 'hooks/readme_links.py'}]\n"
        "markdown_extensions:\n  - toc\n  - pymdownx.snippets:\n      base_path: [.]\n      check_paths: true\n")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=tmp_path, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "site/lessons/x/index.html").read_text(encoding="utf-8")
    assert "the tests (<code>lessons/x/test_x.py</code>)" in html  # a repository file: its path
    assert html.count("<code>lessons/x/test_x.py</code>") == 2  # link text = file name: just the path
    assert 'href="../y/#part"' in html  # another included README: the page that includes it
    assert 'src="../../figures/f.png"' in html  # a file under docs/: a link MkDocs checked
    # The page's own section goes between the README's body and its closing sections.
    assert html.index("Summary inside a code block") < html.index('id="middle"') < html.index("The end.")


# --- the browser --------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """`$PNEUMONIA_CAM_CHROMIUM`, else Debian's `/usr/bin/chromium`, else a chromium on PATH."""
    candidates = [os.environ.get("PNEUMONIA_CAM_CHROMIUM"), "/usr/bin/chromium",
                  shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def base_url(site):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        import websocket  # websocket-client, in the dev extra

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def close(self):
        self.ws.close()

    def _receive(self, timeout: float) -> dict | None:
        import websocket

        self.ws.settimeout(timeout)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def send(self, method: str, timeout: float = 30.0, **params):
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._receive(max(0.05, deadline - time.monotonic()))
            if msg is None:
                continue
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no answer to {method} in {timeout} s")

    def pump(self, seconds: float):
        """Collect events for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._receive(left)
            if msg and "method" in msg:
                self.events.append(msg)

    def wait_for_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method:
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} in {timeout} s")
            self.pump(min(left, 0.2))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            self.pump(0.1)
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = find_chromium()
    if chromium is None and os.environ.get("CI"):
        pytest.fail("no Chromium found in CI: .ci/run installs Debian's `chromium`; check its apt step")
    if chromium is None:
        pytest.skip("no Chromium found (install Debian's `chromium`, as .ci/run does, or set "
                    "PNEUMONIA_CAM_CHROMIUM to a Chromium binary)")
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")
    profile = tmp_path_factory.mktemp("chromium-profile")
    args = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
        "--disable-quic", "--no-proxy-server", "--hide-scrollbars", "--mute-audio",
        # No outside host resolves: a request to one fails, and is also caught by the request log.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={WIDTH},{VIEW_HEIGHT}",
        "about:blank",
    ]
    log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"Chromium did not start ({chromium}):\n"
                            + (profile / "chromium.log").read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with opener.open(req, timeout=10) as resp:
            target = json.load(resp)
        tools = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Network", "Runtime"):
            tools.send(f"{domain}.enable")
        tools.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=VIEW_HEIGHT,
                   deviceScaleFactor=1, mobile=False)
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def shot_dirs(tmp_path_factory) -> list[Path]:
    dirs = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("PNEUMONIA_CAM_SCREENSHOTS"):
        extra = Path(os.environ["PNEUMONIA_CAM_SCREENSHOTS"])
        extra.mkdir(parents=True, exist_ok=True)
        dirs.append(extra)
    return dirs


def _screenshot(tools: DevTools, name: str, dirs: list[Path], full_page: bool = True) -> list[Path]:
    import base64

    height = VIEW_HEIGHT
    if full_page:
        # Grow the viewport to the whole page (rather than captureBeyondViewport, which catches
        # Material's header tabs mid-animation), let the layout settle, capture, restore.
        metrics = tools.send("Page.getLayoutMetrics")
        height = min(int(metrics["cssContentSize"]["height"]) + 1, MAX_SHOT_HEIGHT)
        tools.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height,
                   deviceScaleFactor=1, mobile=False)
        tools.pump(0.6)
    shot = tools.send("Page.captureScreenshot", format="png")
    if full_page:
        tools.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=VIEW_HEIGHT,
                   deviceScaleFactor=1, mobile=False)
    data = base64.b64decode(shot["data"])
    paths = []
    for d in dirs:
        path = d / f"screenshot_{name}.png"
        path.write_bytes(data)
        paths.append(path)
    print(f"screenshot {name}: " + ", ".join(str(p) for p in paths))
    return paths


def _screenshot_at(tools: DevTools, element_id: str, name: str, dirs: list[Path]) -> list[Path]:
    """The viewport with the element `element_id` at its top (below Material's header)."""
    found = tools.evaluate(f"""(() => {{ const e = document.getElementById({json.dumps(element_id)});
        if (!e) return false; e.scrollIntoView(); window.scrollBy(0, -60); return true; }})()""")
    assert found, f"no element #{element_id} on {tools.evaluate('location.href')}"
    tools.pump(0.4)
    return _screenshot(tools, name, dirs, full_page=False)


def _open(tools: DevTools, url: str) -> dict:
    """Load `url`, wait until it and its math are done, and return what the page did."""
    tools.events.clear()
    tools.send("Page.navigate", url=url)
    tools.wait_for_event("Page.loadEventFired", timeout=30)
    # KaTeX renders on Material's document$ after load; then let fonts and late requests settle.
    rendered = tools.wait_until(
        "(() => { const m = document.querySelectorAll('.arithmatex');"
        " return [...m].every(e => e.querySelector('.katex')); })()", timeout=15)
    tools.evaluate("document.fonts.ready.then(() => true)")
    tools.pump(0.5)
    report = tools.evaluate("""(() => ({
        math: document.querySelectorAll('.arithmatex').length,
        mathRendered: [...document.querySelectorAll('.arithmatex')].filter(e => e.querySelector('.katex')).length,
        katexErrors: [...document.querySelectorAll('.katex-error')].map(e => e.textContent.slice(0, 80)),
        katexFonts: [...document.fonts].filter(f => f.family.includes('KaTeX')).map(f => [f.family, f.status]),
        images: [...document.images].map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                              width: i.naturalWidth})),
        codeTitles: [...document.querySelectorAll('.filename')].map(e => e.textContent.trim()),
        title: document.title,
    }))()""")
    report.update(tools.evaluate(_LAYOUT_JS))
    requests = {e["params"]["requestId"]: e["params"]["request"]["url"]
                for e in tools.events if e["method"] == "Network.requestWillBeSent"}
    failed = [(requests.get(e["params"]["requestId"], "?"), e["params"].get("errorText"))
              for e in tools.events if e["method"] == "Network.loadingFailed"]
    http_errors = [(e["params"]["response"]["url"], e["params"]["response"]["status"])
                   for e in tools.events if e["method"] == "Network.responseReceived"
                   and e["params"]["response"]["status"] >= 400]
    exceptions = [e["params"]["exceptionDetails"].get("exception", {}).get("description")
                  or e["params"]["exceptionDetails"].get("text")
                  for e in tools.events if e["method"] == "Runtime.exceptionThrown"]
    report.update(rendered_in_time=rendered, requests=sorted(set(requests.values())), failed=failed,
                  http_errors=http_errors, exceptions=exceptions)
    return report


# What a reader would see as broken layout at this width (see the module docstring).
_LAYOUT_JS = """(() => {
  const column = document.querySelector('.md-content__inner').getBoundingClientRect();
  const short = (e) => e.textContent.replace(/\\s+/g, ' ').trim().slice(0, 70);
  const overflowingMath = [];
  for (const k of document.querySelectorAll('.arithmatex .katex-html')) {
    // The box a formula must fit: its display block (which scrolls, cutting the formula off), else
    // the paragraph, list item or cell it sits in, and never beyond the text column.
    const box = (k.closest('.katex-display')
                 || k.closest('p, li, td, th, dd, dt, blockquote, figcaption') || k).getBoundingClientRect();
    const range = document.createRange();
    range.selectNodeContents(k);  // the glyphs' extent (.katex-html itself is as wide as its box)
    const r = range.getBoundingClientRect();
    const left = Math.max(box.left, column.left), right = Math.min(box.right, column.right);
    if (r.width > 0 && (r.left < left - 1 || r.right > right + 1))
      overflowingMath.push(`${short(k)} (${Math.round(r.width)} px in ${Math.round(right - left)} px)`);
  }
  const scrollingTables = [...document.querySelectorAll('.md-typeset__scrollwrap, .md-typeset table')]
    .filter(w => w.scrollWidth > w.clientWidth + 1)
    .map(w => `${short(w.querySelector('tr') || w)} (${w.scrollWidth} px in ${w.clientWidth} px)`);
  const backticks = [];
  const walker = document.createTreeWalker(document.querySelector('.md-content'), NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode())
    if (n.textContent.includes('`') && !n.parentElement.closest('code, pre, kbd, script, style, textarea'))
      backticks.push(n.textContent.trim().slice(0, 90));
  // Material's code block scrolls in its <code>: a signature wider than the box is cut off there.
  const cutSignatures = [...document.querySelectorAll('.doc-signature pre > code')]
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => `${short(p).slice(0, 50)} (${p.scrollWidth} px in ${p.clientWidth} px)`);
  // Markdown or math left unrendered: $$, \\( or \\[ in the text, or a * that should have been emphasis.
  const rawMath = [], literalStars = [];
  const walker2 = document.createTreeWalker(document.querySelector('.md-content'), NodeFilter.SHOW_TEXT);
  for (let n = walker2.nextNode(); n; n = walker2.nextNode()) {
    if (n.parentElement.closest('code, pre, kbd, script, style, textarea, .katex, .arithmatex')) continue;
    const t = n.textContent;
    if (/\\$\\$|\\\\\\(|\\\\\\[|\\\\frac|\\\\sum/.test(t)) rawMath.push(t.trim().slice(0, 90));
    if (/(^|\\s)\\*{1,2}[A-Za-z]|[A-Za-z.:]\\*{1,2}(\\s|$)/.test(t)) literalStars.push(t.trim().slice(0, 90));
  }
  // A table whose header row says nothing.
  const emptyHeaders = [...document.querySelectorAll('.md-typeset table')]
    .filter(t => { const ths = [...t.querySelectorAll('thead th')];
                   return ths.length && ths.every(th => !th.textContent.trim()); })
    .map(t => short(t.querySelector('tbody tr') || t));
  return {overflowingMath, scrollingTables, backticks, cutSignatures, rawMath, literalStars, emptyHeaders};
})()"""


def _check_layout(report: dict):
    assert not report["overflowingMath"], f"formulas wider than their box at {WIDTH} px: {report['overflowingMath']}"
    assert not report["scrollingTables"], f"tables that scroll sideways at {WIDTH} px: {report['scrollingTables']}"
    assert not report["backticks"], f"literal backticks outside code (unrendered Markdown): {report['backticks']}"
    assert not report["cutSignatures"], f"signatures wider than their box (is ruff installed?): {report['cutSignatures']}"
    assert not report["rawMath"], f"math left as raw LaTeX in the text: {report['rawMath']}"
    assert not report["literalStars"], f"literal * in the text (unrendered emphasis or list): {report['literalStars']}"
    assert not report["emptyHeaders"], f"tables with an empty header row: {report['emptyHeaders']}"


def _check_page(report: dict, min_math: int, min_images: int):
    outside = [u for u in report["requests"]
               if urllib.parse.urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urllib.parse.urlsplit(u).hostname not in LOCAL_HOSTS]
    assert not outside, f"requests to non-local hosts: {outside}"
    assert not report["failed"], f"failed requests: {report['failed']}"
    assert not report["http_errors"], f"HTTP errors: {report['http_errors']}"
    assert not report["exceptions"], f"script errors: {report['exceptions']}"
    # Math: present, every formula rendered by KaTeX, none rejected, KaTeX's fonts served and loaded.
    assert report["math"] >= min_math, f"expected at least {min_math} formulas, found {report['math']}"
    assert report["rendered_in_time"] and report["mathRendered"] == report["math"], report
    assert not report["katexErrors"], f"KaTeX could not parse: {report['katexErrors']}"
    font_states = dict(report["katexFonts"])
    if report["math"]:  # a page without math loads no KaTeX font
        assert any(s == "loaded" for s in font_states.values()), f"no KaTeX font loaded: {report['katexFonts']}"
    assert not [f for f, s in report["katexFonts"] if s == "error"], f"KaTeX fonts failed: {report['katexFonts']}"
    # Images: every one decoded.
    assert len(report["images"]) >= min_images, report["images"]
    broken = [i["src"] for i in report["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    _check_layout(report)


def test_home_page_in_browser(browser, base_url, shot_dirs):
    report = _open(browser, base_url)
    _check_page(report, min_math=3, min_images=2)  # the pipeline diagram and the phantom grid
    assert any(i["src"].endswith("assets/pipeline.svg") for i in report["images"])
    assert any(urllib.parse.urlsplit(u).path.endswith("katex.min.js") for u in report["requests"])
    _screenshot(browser, "home", shot_dirs)
    # The dark palette, as the toggle sets it.
    browser.evaluate("document.body.setAttribute('data-md-color-scheme', 'slate')")
    browser.pump(0.3)
    _screenshot(browser, "home_dark", shot_dirs, full_page=False)
    # Search runs offline too: the index and the search worker are files of the site.
    browser.evaluate("""(() => { const q = document.querySelector('[data-md-component=search-query]');
        q.focus(); q.value = 'activation'; q.dispatchEvent(new Event('input', {bubbles: true}));
        q.dispatchEvent(new KeyboardEvent('keyup', {key: 'n', bubbles: true})); return true; })()""")
    assert browser.wait_until("document.querySelectorAll('.md-search-result__item').length > 0", 10), \
        "the search found nothing for 'activation'"


def test_cam_lesson_in_browser(browser, base_url, shot_dirs):
    report = _open(browser, base_url + "lessons/03_cam/")
    _check_page(report, min_math=1, min_images=0)
    for name in ("steps/hook.py", "steps/weighted_sum.py", "steps/zoom.py", "steps/overlay.py",
                 "extensions/gradcam.py", "extensions/localization.py"):
        assert f"pneumonia_cam/{name}" in report["codeTitles"], f"{name} not included: {report['codeTitles']}"
    _screenshot(browser, "cam_lesson", shot_dirs)


# Each Returns (or Yields) table of the API page, as the reader sees it: per row its name, type and
# the first words of its description.
_RETURNS_JS = """(() => [...document.querySelectorAll('.doc-section-title')]
  .filter(t => /^(Returns|Yields)/.test(t.textContent.trim()))
  .map(t => {
    const after = t.closest('p').nextElementSibling;
    const table = after && (after.tagName === 'TABLE' ? after : after.querySelector('table'));
    const object = t.closest('.doc-object');
    const heading = object && object.querySelector(':scope > .doc-heading');
    const where = heading ? heading.id || heading.textContent.trim() : '?';
    if (!table) return {where, columns: [], rows: []};
    const columns = [...table.querySelectorAll('thead th')].map(th => th.textContent.trim());
    const rows = [...table.querySelectorAll('tbody tr')].map(tr =>
      [...tr.children].map(td => td.textContent.replace(/\\s+/g, ' ').trim().slice(0, 60)));
    return {where, columns, rows};
  }))()"""


def _returns_problems(tables: list[dict]) -> list[str]:
    """Rows that are not one returned thing with its description: an empty description; a name that
    repeats the type (``dict: text`` read as a name); several rows of which one has no name (the
    continuation lines of one entry, each made a row of its own)."""
    problems = []
    for t in tables:
        if not t["rows"]:
            problems.append(f"{t['where']}: a Returns section without a table")
            continue
        col = {c: i for i, c in enumerate(t["columns"])}
        desc, name, typ = col.get("Description"), col.get("Name"), col.get("Type")
        for row in t["rows"]:
            if desc is None or not row[desc]:
                problems.append(f"{t['where']}: a row without a description: {row}")
            if name is not None and typ is not None and row[name] and row[name] == row[typ]:
                problems.append(f"{t['where']}: the name repeats the type: {row}")
            if len(t["rows"]) > 1 and (name is None or not row[name]):
                problems.append(f"{t['where']}: {len(t['rows'])} unnamed rows, a description in pieces: {row}")
    return problems


def test_returns_problems_are_found():
    """The check above, on the three shapes a broken Returns section renders as."""
    good = {"where": "f", "columns": ["Name", "Type", "Description"],
            "rows": [["fpr", "ndarray", "(T + 1,) false-positive rates"], ["tpr", "ndarray", "(T + 1,) true"]]}
    split = {"where": "g", "columns": ["Type", "Description"],
             "rows": [["dict", "The state after the last epoch, a dict of"], ["dict", "lr, train_loss, val_acc"]]}
    type_as_name = {"where": "h", "columns": ["Name", "Type", "Description"], "rows": [["dict", "dict", "The state"]]}
    empty = {"where": "i", "columns": ["Type", "Description"], "rows": [["dict", ""]]}
    assert _returns_problems([good, {**good, "rows": good["rows"][:1]}]) == []
    assert len(_returns_problems([split])) == 2
    assert len(_returns_problems([type_as_name])) == 1
    assert len(_returns_problems([empty])) == 1


def test_api_page_in_browser(browser, base_url, shot_dirs):
    report = _open(browser, base_url + "api/")
    _check_page(report, min_math=3, min_images=0)
    tables = browser.evaluate(_RETURNS_JS)
    assert len(tables) >= 20, f"expected the package's Returns sections, found {len(tables)}"
    problems = _returns_problems(tables)
    assert not problems, "Returns tables that are not one row per returned thing:\n" + "\n".join(problems)
    _screenshot(browser, "api", shot_dirs)  # its first MAX_SHOT_HEIGHT px
    for element_id, name in [("pneumonia_cam.steps.fit.fit", "api_fit"),
                             ("pneumonia_cam.steps.metrics.roc_curve", "api_roc_curve"),
                             ("pneumonia_cam.support.phantoms", "api_phantoms"),
                             ("pneumonia_cam.extensions.saliency", "api_saliency"),
                             ("pneumonia_cam.steps.gap", "api_gap")]:
        _screenshot_at(browser, element_id, name, shot_dirs)


def test_every_other_page_in_browser(site, browser, base_url):
    """The pages not opened above: everything loads, and the layout checks hold at 1280 px."""
    opened = {"", "lessons/03_cam/", "api/"}
    pages = sorted(p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html"))
    pages = [p.removeprefix("./") for p in pages if p.removeprefix("./") not in opened]
    assert len(pages) >= 6, pages
    failures = []
    for page in pages:
        try:
            _check_page(_open(browser, base_url + page), min_math=0, min_images=0)
        except AssertionError as e:
            failures.append(f"{page}: {str(e).splitlines()[0]}")
    assert not failures, "\n".join(failures)
