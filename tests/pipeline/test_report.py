"""`dvc plots show` in a real browser: headless Chromium loads the report page from disk and every plot renders.

The page DVC writes loads Vega from cdn.jsdelivr.net; tests run offline, so a copy of the page points those three
script tags at the same releases fetched from the npm registry (`.ci/run` puts them in ~/.cache/embedlab/vega, or
set EMBEDLAB_VEGA_DIR). Nothing else on the page changes. A screenshot lands in test-artifacts/report.png."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO, chromium, dvc, missing_tool

pytestmark = pytest.mark.slow


VEGA_DIR = Path(os.environ.get("EMBEDLAB_VEGA_DIR", Path.home() / ".cache" / "embedlab" / "vega"))


VEGA_FILES = {
    "vega@5.20.2": "vega/build/vega.min.js",
    "vega-lite@5.2.0": "vega-lite/build/vega-lite.min.js",
    "vega-embed@6.18.2": "vega-embed/build/vega-embed.min.js",
}


# Wraps vegaEmbed before the page's own scripts call it, counts the data marks each view drew, checks every
# image decoded, and writes the verdict into the DOM for --dump-dom to print.
CHECK = """<script>
window.__plots = [];
const __embed = window.vegaEmbed;
window.vegaEmbed = (el, spec, opts) => {
  const done = __embed(el, spec, opts).then(
    (result) => {
      const count = (node) => (node.items || []).reduce(
        (n, item) => n + (node.role === "mark" && node.marktype !== "group" ? 1 : 0) + count(item), 0);
      const marks = count(result.view.scenegraph().root);
      return {el, marks, canvas: !!document.querySelector(el + " canvas, " + el + " svg")};
    },
    (error) => ({el, error: String(error)}));
  window.__plots.push(done);
  return done;
};
window.addEventListener("load", async () => {
  const plots = await Promise.all(window.__plots);
  const images = [...document.images].map(
    (img) => ({src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0}));
  const out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify({plots, images});
  document.body.appendChild(out);
});
</script>
"""


def _offline_page(report: Path) -> Path:
    html = (report / "index.html").read_text()
    for package, local in VEGA_FILES.items():
        tag = f'<script src="https://cdn.jsdelivr.net/npm/{package}"></script>'
        assert tag in html, f"the report no longer loads {package} from the CDN; update VEGA_FILES"
        html = html.replace(tag, f'<script src="{(VEGA_DIR / local).as_uri()}"></script>')
    html = html.replace("</head>", CHECK + "</head>", 1)
    page = report / "index.offline.html"
    page.write_text(html)
    return page


@pytest.mark.browser
def test_dvc_plots_show_renders_every_plot_in_chromium(pipeline: Path, tmp_path: Path) -> None:
    browser = chromium()
    missing = [str(VEGA_DIR / f) for f in VEGA_FILES.values() if not (VEGA_DIR / f).exists()]
    if missing:
        missing_tool(f"Vega scripts not found ({missing[0]}); fetch them as .ci/run does, or set EMBEDLAB_VEGA_DIR")
    report = tmp_path / "report"
    dvc("plots", "show", "-o", str(report), cwd=pipeline)
    page = _offline_page(report)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--virtual-time-budget=60000",
        "--window-size=1400,9000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
    assert found, "the page never finished loading (no report-check element)"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    plots, images = check["plots"], check["images"]

    titles = {p["el"] for p in plots}
    # The run's own training curves (its one backbone, never the committed logs: the test copy has none), mAP@k,
    # confusion matrices, per-class AP and t-SNE scatters are all on the page.
    curves = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
    for expected in (
        *(f"dvclive_mobilenetv2_plots_metrics_{c}" for c in curves),
        "map_at_k",
        "per_class_ap",
        "confusion",
        "tsne",
    ):
        assert any(expected in t for t in titles), f"no {expected} plot among {sorted(titles)}"
    broken = [p for p in plots if "error" in p or not p["canvas"] or p["marks"] == 0]
    assert not broken, f"plots that did not render or drew no marks: {broken}"
    srcs = " ".join(i["src"] for i in images)
    for expected in ("augmentations", "_loss", "examples", "_tsne"):
        assert expected in srcs, f"no {expected} image on the page"
    assert all(i["ok"] for i in images), [i["src"] for i in images if not i["ok"]]

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 50_000
