"""HTML fragments for the analysis report: the category-shift chart and table, and the
latents of each category with their examples.

Fragments are self-contained (inline styles, the chart base64-embedded) and written to
``<analysis>/report_sections/``; ``sae_lens_crosscoder.analysis.report.build_report``
includes every fragment there, sorted by file name, when it regenerates ``report.html``.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_crosscoder.labelling.examples import Example, LatentExamples, token_text
from sae_lens_crosscoder.labelling.labels import FAILED, LABELLED
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

if TYPE_CHECKING:
    import pandas as pd

    from sae_lens_crosscoder.labelling.shift import ReferenceValue

logger = logging.getLogger(__name__)

SECTIONS_DIR = "report_sections"
_TABLE = "border-collapse:collapse;font-size:12px;margin:8px 0"
_CELL = "border:1px solid #ddd;padding:3px 6px;text-align:right"
_LEFT = "border:1px solid #ddd;padding:3px 6px;text-align:left"


def format_pct(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value * 100:+.1f}%"


def shift_section_html(frame: pd.DataFrame, references: list[ReferenceValue], png: Path | None,
                       heading: str = "Category shift") -> str:
    defs = frame.attrs.get("definitions", {})
    a, b = html.escape(str(defs.get("a", "A"))), html.escape(str(defs.get("b", "B")))
    refs = {r.category: r for r in references}
    parts = [f'<section style="font-family:sans-serif;margin:16px 0"><h2>{html.escape(heading)}: {b} vs {a}</h2>']
    parts.append(
        f"<p style='font-size:13px'>Share: <b>{html.escape(str(defs.get('share', '')))}</b> "
        f"({html.escape(str(defs.get('share_definition', '')))}), weight {html.escape(str(defs.get('weight', '')))}. "
        f"Relative change (p<sub>{b}</sub> &minus; p<sub>{a}</sub>) / p<sub>{a}</sub>. "
        f"{a}: {defs.get('n_latents_a', '?')} labelled latents ({defs.get('n_failed_a', 0)} failed); "
        f"{b}: {defs.get('n_latents_b', '?')} ({defs.get('n_failed_b', 0)} failed). "
        f"Intervals: {html.escape(str(defs.get('bootstrap', '')))}.</p>"
    )
    if png is not None and Path(png).is_file():
        data = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f'<img alt="category shift chart" style="max-width:100%" src="data:image/png;base64,{data}">')
    head = ["category", f"count {a}", f"count {b}", f"share {a}", f"share {b}", "relative change", "interval"]
    if refs:
        head += ["published", "source"]
    parts.append(f'<table style="{_TABLE}"><tr>' + "".join(f'<th style="{_LEFT}">{h}</th>' for h in head) + "</tr>")
    for row in frame.to_dict("records"):
        ref = refs.get(row["category"])
        if row["count_a"] + row["count_b"] == 0 and ref is None:
            continue
        indent = "&nbsp;&nbsp;&nbsp;" if row.get("parent") else ""
        cells = [
            f'<td style="{_LEFT}" title="{html.escape(str(row.get("note", "")))}">{indent}{html.escape(row["title"])}</td>',
            f'<td style="{_CELL}">{row["count_a"]}</td>', f'<td style="{_CELL}">{row["count_b"]}</td>',
            f'<td style="{_CELL}">{row["share_a"]:.3f}</td>', f'<td style="{_CELL}">{row["share_b"]:.3f}</td>',
            f'<td style="{_CELL}">{format_pct(row["rel_change"])}</td>',
            f'<td style="{_CELL}">[{format_pct(row["rel_change_lo"])}, {format_pct(row["rel_change_hi"])}]</td>',
        ]
        if refs:
            if ref is None:
                cells += [f'<td style="{_CELL}"></td>', f'<td style="{_LEFT}"></td>']
            else:
                shown = f"{ref.value:+.1f}%" if ref.value is not None else f"{ref.direction} (no figure)"
                cells += [f'<td style="{_CELL}">{shown}</td>', f'<td style="{_LEFT}">{html.escape(ref.provenance)}</td>']
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    notes = [f"{r['title']}: {r['note']}" for r in frame.to_dict("records") if r.get("note")]
    if notes:
        parts.append("<p style='font-size:12px;color:#555'>" + "<br>".join(html.escape(n) for n in notes) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render_example_html(example: Example, window_before: int = 16, window_after: int = 6) -> str:
    """Tokens around the centre, each active one shaded by its activation."""
    peak = max((a for a in example.acts if a > 0), default=1.0)
    start = max(0, example.center - window_before)
    stop = min(len(example.tokens), example.center + window_after + 1)
    spans = []
    for i in range(start, stop):
        text = html.escape(token_text(example.tokens[i])).replace("\n", "&#8629;")
        act = example.acts[i]
        if act > 0:
            alpha = min(1.0, 0.15 + 0.85 * act / peak)
            border = "border-bottom:2px solid #b22;" if i == example.center else ""
            spans.append(f'<span title="{act:.3f}" style="background:rgba(220,80,40,{alpha:.2f});{border}">{text}</span>')
        else:
            spans.append(text)
    return f'<code style="white-space:pre-wrap;font-size:11px">{"".join(spans)}</code>'


def latents_by_category_html(labels: pd.DataFrame, examples: dict[int, LatentExamples], taxonomy: Taxonomy,
                             set_name: str, max_latents: int = 20, n_examples: int = 3) -> str:
    name = html.escape(set_name)
    labelled = labels[labels["status"] == LABELLED]
    failed = labels[labels["status"] == FAILED]
    n_latents = labels["latent"].nunique()
    parts = [f'<section style="font-family:sans-serif;margin:16px 0"><h2>Latents by category: {name}</h2>',
             f"<p style='font-size:13px'>{n_latents} latents, {labelled['latent'].nunique()} labelled, "
             f"{failed['latent'].nunique()} failed; taxonomy {html.escape(taxonomy.name)}; "
             f"labeller(s) {html.escape(', '.join(sorted(set(labels['labeller']))))}.</p>"]
    for cat in taxonomy.categories:
        rows = labelled[labelled["category"] == cat.name].sort_values("confidence", ascending=False)
        if rows.empty:
            continue
        parts.append(f"<h3 style='margin:10px 0 4px'>{html.escape(cat.display)} ({rows['latent'].nunique()})</h3>")
        parts.append(f'<table style="{_TABLE}"><tr><th style="{_LEFT}">latent</th><th style="{_LEFT}">confidence</th>'
                     f'<th style="{_LEFT}">examples</th></tr>')
        for row in rows.head(max_latents).to_dict("records"):
            ex = examples.get(int(row["latent"]))
            shown = "<br>".join(render_example_html(e) for e in (ex.top[:n_examples] if ex else []))
            why = html.escape(str(row.get("explanation") or row.get("reason") or ""))
            parts.append(f'<tr><td style="{_LEFT}" title="{why}">{int(row["latent"])}</td>'
                         f'<td style="{_CELL}">{row["confidence"]:.2f}</td><td style="{_LEFT}">{shown}</td></tr>')
        parts.append("</table>")
        if len(rows) > max_latents:
            parts.append(f"<p style='font-size:12px'>{len(rows) - max_latents} more in the labels table.</p>")
    if not failed.empty:
        reasons = failed.groupby("reason")["latent"].apply(lambda s: ", ".join(map(str, s.head(10))))
        parts.append("<h3>Failed</h3><ul style='font-size:12px'>" + "".join(
            f"<li>{html.escape(str(r))}: {html.escape(lats)}</li>" for r, lats in reasons.items()) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def write_section(analysis_dir: str | Path, name: str, fragment: str) -> Path:
    out = Path(analysis_dir) / SECTIONS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.html"
    path.write_text(fragment)
    return path


def rebuild_report(analysis_dir: str | Path) -> Path | None:
    """Regenerate the analysis report with the fragments included; None when the
    analysis package (or its report builder) is not installed yet."""
    try:
        from sae_lens_crosscoder.analysis.report import build_report
    except ImportError:
        logger.info("analysis report builder not available; fragments left in %s/%s", analysis_dir, SECTIONS_DIR)
        return None
    result = build_report(Path(analysis_dir))
    return Path(result) if result is not None else Path(analysis_dir) / "report.html"
