"""``report.html``: one self-contained page (plots embedded as data URIs, inline CSS, no external
resource; its one tiny script only records how many images loaded, for a headless browser check)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from tunelab.compare.summary import RunSummary
from tunelab.compare.tables import heading, table_rows

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #212529; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #495057; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.35rem 0.6rem; border-bottom: 1px solid #dee2e6; text-align: right; white-space: nowrap; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
tr.pareto td { background: #fff4e6; } td.star { color: #d9480f; font-weight: bold; }
.recommendation p { margin: 0.4rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #dee2e6; }
figcaption { color: #495057; font-size: 0.85rem; }
.failed li { color: #c92a2a; }
"""

# Records how many images decoded (complete and with a width) so a headless browser can check them.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.images = loaded + "/" + images.length;
});
"""


def html_table(summaries: Sequence[RunSummary], budget: str) -> str:
    headers, rows = table_rows(summaries, budget)
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        ('<tr class="pareto">' if row[0] else "<tr>") + f'<td class="star">{e(row[0])}</td>'
        + "".join(f"<td>{e(x)}</td>" for x in row[1:]) + "</tr>" for row in rows)
    return f'<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(summaries: Sequence[RunSummary], budget: str, recommendation: str, plots: dict[str, Path],
                why: Sequence[str] = ()) -> str:
    """One self-contained page: table, recommendation and why, plots as data URIs, failed runs."""
    e = html.escape
    captions = {"metric_vs_trainable": "Metric against trainable parameters (%, log scale).",
                "metric_vs_time": "Metric against training time.", "peak_memory": "Peak memory per run.",
                "intervals": "Each method's metric with its interval (over seeds, else a bootstrap over test rows).",
                "learning_curves": "Learning curves: metric against training rows (log scale), with intervals."}
    figures = "".join(
        f'<figure><img alt="{e(captions[name])}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{e(captions[name])}</figcaption></figure>'
        for name, path in plots.items())
    failed = [s for s in summaries if not s.ok]
    failed_html = ("<h2>Failed runs</h2><ul class=\"failed\">" + "".join(
        f"<li><strong>{e(s.label)}</strong> (<code>{e(str(s.run_dir))}</code>): {e(s.error or '')}</li>"
        for s in failed) + "</ul>") if failed else ""
    advice = "".join(f"<p>{e(line)}</p>" for line in recommendation.splitlines())
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>tunelab comparison</title><style>{CSS}</style></head>\n<body>"
            f'<h1>tunelab comparison</h1><p class="meta">{e(heading(summaries, budget))}</p>'
            f"{html_table(summaries, budget)}"
            f'<h2>Recommendation</h2><div class="recommendation">{advice}</div>'
            + (f'<h2>Why this recommendation</h2><ol class="why">{"".join(f"<li>{e(x)}</li>" for x in why)}</ol>'
               if why else "") +
            f"<h2>Plots</h2>{figures}{failed_html}"
            f"<script>{IMAGE_CHECK}</script></body></html>\n")
