// Render the math that pymdownx.arithmatex (generic mode) wrapped in <span|div class="arithmatex">,
// with the KaTeX shipped in assets/katex/. Only those elements are touched, so a "$" in prose or
// code is never mistaken for math. document$ is Material's page-load observable.
document$.subscribe(({ body }) => {
  body.querySelectorAll(".arithmatex").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
        { left: "$$", right: "$$", display: true },
      ],
      // A formula KaTeX cannot render (a parse error, an unknown command) stays as its LaTeX source
      // and is marked .katex-error; tests/test_docs_site.py fails on either.
      throwOnError: true,
      errorCallback: (message, error) => {
        el.classList.add("katex-error");
        console.error(message, error);
      },
    });
  });
});
