"""The side-by-side section: each difference latent beside the crosscoder latent the join
found for it (or the best one by cosine when there is no good match), with the statistics
and one max-activating example from each view.

Written to `<difference analysis>/report_sections/40_difference_view.html` and, when the
crosscoder's analysis directory is known, to its `report_sections/` too (its report is
rebuilt), so both reports show both views.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from sae_lens_crosscoder.analysis.examples import EXAMPLES_FILE, read_examples
from sae_lens_crosscoder.analysis.report import build_report, example_line, fmt, kv_table
from sae_lens_crosscoder.difference.join import ABSORBED, MATCH, NONE
from sae_lens_crosscoder.labelling.report_section import write_section
from sae_lens_crosscoder.labelling.run import slug

SECTION = "40_difference_view"
VERDICT_STYLE = {MATCH: "#55a868", ABSORBED: "#dd8452", NONE: "#c44e52"}


def write_difference_view(out_dir: str | Path, crosscoder_analysis: str | Path | None = None,
                          max_rows: int | None = None) -> list[Path]:
    """Write the section into the difference analysis (and the crosscoder's analysis,
    rebuilding its report). Returns the fragments written."""
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    fragment = difference_view_html(out, crosscoder_analysis, max_rows)
    written = [write_section(out, SECTION, fragment)]
    if crosscoder_analysis is not None and "join" in summary:
        cc_dir = Path(crosscoder_analysis)
        pair = summary["difference_of"]
        written.append(write_section(cc_dir, f"{SECTION}_{slug(pair['finetuned'])}_minus_{slug(pair['base'])}", fragment))
        if (cc_dir / "summary.json").is_file():
            build_report(cc_dir)
    return written


def difference_view_html(out_dir: str | Path, crosscoder_analysis: str | Path | None = None,
                         max_rows: int | None = None) -> str:
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "latents.parquet")
    cap = max_rows if max_rows is not None else int(summary.get("config", {}).get("report_max_cards", 200))
    live = table[table["freq"] > 0].sort_values(["freq", "latent"], ascending=[False, True]).head(cap)
    examples = read_examples(out / EXAMPLES_FILE, set(live["latent"].astype(int).tolist()))
    pair = summary["difference_of"]
    label = html.escape(f"{pair['finetuned']} − {pair['base']}")
    evals = summary.get("evals", {})
    per = evals.get("per_model", {})
    left = kv_table([
        ("architecture", summary.get("architecture")),
        ("latents", summary.get("d_sae")),
        ("live latents", int((table["freq"] > 0).sum())),
        ("L0", evals.get("l0")),
        ("FVE of the difference", per.get("difference SAE", {}).get("fve")),
    ])
    parts = [f"<h2>Difference view: an SAE on {label} beside the crosscoder</h2>"]
    join = summary.get("join")
    if join is None:
        parts.append(
            f"<p>The difference SAE encodes {label} on the same tokens the crosscoder sees. No crosscoder was "
            "joined (pass <code>--join-crosscoder DIR</code>), so this section shows one view.</p>"
            f'<div style="display:flex;gap:24px;flex-wrap:wrap"><div><h3>Difference SAE</h3>{left}</div></div>'
        )
        return "".join(parts)

    t = summary["thresholds"]
    cc_table, cc_examples = _crosscoder_side(crosscoder_analysis, live)
    right = kv_table([
        ("crosscoder", join.get("crosscoder")),
        ("architecture", join.get("architecture")),
        ("latents", join.get("d_sae")),
        ("L0", evals.get("crosscoder_l0")),
        ("FVE of the difference", per.get("crosscoder", {}).get("fve")),
        *[(f"difference latents: {v}", n) for v, n in join["verdict_counts"].items()],
        ("crosscoder latents matched", ", ".join(map(str, join["matched_crosscoder_latents"][:30])) or "none"),
        ("crosscoder latents absorbing a change", ", ".join(map(str, join["absorbing_crosscoder_latents"][:30])) or "none"),
    ])
    parts.append(
        f"<p>Both views read the same tokens. The difference SAE encodes {label}; the crosscoder encodes both "
        "models together. For each difference latent i (direction u<sub>i</sub>) and crosscoder latent j, the "
        "crosscoder's decoder difference is taken in raw activation space, "
        "Δd<sub>j</sub> = d<sub>j</sub><sup>ft</sup>/s<sub>ft</sub> − d<sub>j</sub><sup>base</sup>/s<sub>base</sub> "
        "(s: the crosscoder's per-model scaling factors). <b>cos</b> = cos(u<sub>i</sub>, Δd<sub>j</sub>); "
        "<b>jaccard</b>, <b>precision</b>, <b>recall</b> compare their firing tokens; <b>carried</b> is the share "
        "of the change along u<sub>i</sub> on i's tokens that j's term reconstructs, <b>cc explains</b> the share "
        "the whole crosscoder reconstructs. "
        f"<b>match</b>: cos ≥ {t['cos_min']}, jaccard ≥ {t['jaccard_min']} and carried ≥ {t['carried_min']}; "
        "<b>absorbed</b>: no match, but one "
        f"latent carries ≥ {t['carried_min']} while firing on ≥ {t['recall_min']} of i's tokens (it also fires "
        "elsewhere); <b>none</b>: no good match. Without a match the best-cosine latent is shown.</p>"
        f'<div style="display:flex;gap:24px;flex-wrap:wrap"><div><h3>Difference SAE</h3>{left}</div>'
        f"<div><h3>Crosscoder</h3>{right}</div></div>"
    )
    head = ("difference latent", "freq", "verdict", "crosscoder latent", "cc class / Δnorm", "cos", "jaccard",
            "precision", "recall", "carried", "cc explains", f"difference SAE example ({label})",
            "crosscoder latent example")
    rows = []
    for row in live.to_dict("records"):
        latent, verdict = int(row["latent"]), str(row["join_verdict"])
        partner = int(row["join_latent"]) if int(row["join_latent"]) >= 0 else int(row["join_best_cos_latent"])
        shown = "" if int(row["join_latent"]) >= 0 else " (best cos)"
        cc_class = cc_table.get(partner) if cc_table is not None else None
        record = examples.get(latent)
        cc_record = cc_examples.get(partner)
        stats = [row["join_cos"], row["join_jaccard"], row["join_precision"], row["join_recall"], row["join_carried"]]
        if int(row["join_latent"]) < 0:  # no verdict latent: the best-cosine one's cosine, nothing co-fires well
            stats = [row["join_best_cos"], row["join_best_jaccard"], None, None, row["join_best_carried"]]
        delta_norm = row.get("join_delta_norm")
        rows.append(
            f"<tr><td>{latent}</td><td>{fmt(float(row['freq']))}</td>"
            f'<td style="color:{VERDICT_STYLE.get(verdict, "#333")};font-weight:bold">{html.escape(verdict)}</td>'
            f"<td>{partner}{shown}</td><td>{html.escape(str(cc_class or '—'))} / {fmt(_num(delta_norm))}</td>"
            + "".join(f"<td>{fmt(_num(v))}</td>" for v in stats)
            + f"<td>{fmt(_num(row['join_explained']))}</td>"
            f"<td>{_first_example(record, float(row['max_act']))}</td>"
            f"<td>{_first_example(cc_record, None)}</td></tr>"
        )
    parts.append(
        f"<h3>{len(live)} most frequent difference latents</h3>"
        '<table class="kv"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
        + "".join(rows) + "</table>"
        + ("<p>Crosscoder examples come from its analysis directory; none was given.</p>" if cc_table is None else "")
        + "<p>All candidate pairs (top crosscoder latents by cos, jaccard and carried share) are in join.parquet.</p>"
    )
    return "".join(parts)


def _crosscoder_side(analysis: str | Path | None, live: pd.DataFrame) -> tuple[dict[int, str] | None, dict[int, Any]]:
    if analysis is None or not (Path(analysis) / "latents.parquet").is_file():
        return None, {}
    frame = pd.read_parquet(Path(analysis) / "latents.parquet")
    classes = dict(zip(frame["latent"].astype(int), frame["class"].astype(str))) if "class" in frame else {}
    wanted = set(live["join_latent"].astype(int)) | set(live["join_best_cos_latent"].astype(int))
    return classes, read_examples(Path(analysis) / EXAMPLES_FILE, {j for j in wanted if j >= 0})


def _first_example(record: dict[str, Any] | None, scale: float | None) -> str:
    if not record or not record.get("top"):
        return "<em>no example</em>"
    example = record["top"][0]
    return example_line(example, scale if scale and scale > 0 else max(example["value"], 1e-9))


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
