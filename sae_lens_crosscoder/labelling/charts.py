"""The category-shift bar chart: measured relative change with its bootstrap interval,
and the published value beside it where one exists."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from sae_lens_crosscoder.labelling.shift import ReferenceValue


def plot_shift(frame: pd.DataFrame, references: list[ReferenceValue], path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    refs = {r.category: r for r in references}
    defs = frame.attrs.get("definitions", {})
    # categories present in either set, or with a published value
    rows = frame[(frame["count_a"] + frame["count_b"] > 0) | frame["category"].isin(list(refs))].reset_index(drop=True)
    finite = [abs(v) * 100 for v in rows["rel_change"] if math.isfinite(v)]
    finite += [abs(r.value) for r in refs.values() if r.value is not None]
    limit = max(150.0, 1.15 * max(finite, default=100.0))
    lo_lim, hi_lim = -min(limit, 110.0), limit

    n = len(rows)
    fig, ax = plt.subplots(figsize=(9, 0.55 * n + 1.8))
    y = list(range(n))
    height = 0.38 if refs else 0.7
    for i, row in rows.iterrows():
        value = row["rel_change"] * 100
        yi = i - height / 2 if refs else i
        label = f"{row['count_a']}/{row['count_b']}"
        if math.isnan(value):
            ax.text(0, yi, "  undefined (absent from both)", va="center", fontsize=8, color="grey")
            continue
        shown = max(lo_lim, min(hi_lim, value)) if math.isfinite(value) else hi_lim
        # an infinite change (absent from A) is drawn to the edge, faded, so it is not read as a value
        ax.barh(yi, shown, height=height, color="#3b75af", alpha=1.0 if math.isfinite(value) else 0.35,
                label="measured" if "measured" not in ax.get_legend_handles_labels()[1] else None)
        lo, hi = row.get("rel_change_lo", math.nan) * 100, row.get("rel_change_hi", math.nan) * 100
        if math.isfinite(value) and not math.isnan(lo) and not math.isnan(hi):
            lo_c, hi_c = max(lo_lim, lo), min(hi_lim, hi) if math.isfinite(hi) else hi_lim
            ax.plot([lo_c, hi_c], [yi, yi], color="black", lw=1.2)
            for x in (lo_c, hi_c):
                ax.plot([x, x], [yi - height / 4, yi + height / 4], color="black", lw=1.2)
            if not math.isfinite(hi) or hi > hi_lim:
                ax.text(hi_lim, yi, "›", va="center", ha="right", fontsize=12)
        text = "+inf" if not math.isfinite(value) else f"{value:+.0f}%"
        ax.text(shown + (2 if shown >= 0 else -2), yi + height * 0.05, f" {text} ({label})", va="center",
                ha="left" if shown >= 0 else "right", fontsize=7)
        ref = refs.get(row["category"])
        if ref is not None:
            yr = i + height / 2
            hatch = "" if ref.provenance == "abstract" else "//"
            if ref.value is not None:
                ax.barh(yr, ref.value, height=height, color="#e08a3c", hatch=hatch, edgecolor="white",
                        label="published" if "published" not in ax.get_legend_handles_labels()[1] else None)
                ax.text(ref.value + (2 if ref.value >= 0 else -2), yr, f" {ref.value:+.1f}% ({ref.provenance})",
                        va="center", ha="left" if ref.value >= 0 else "right", fontsize=7, color="#9a5317")
            else:
                arrow = "▲ up" if ref.direction == "up" else "▼ down"
                ax.text(0, yr, f" {arrow} (published, no figure; {ref.provenance})", va="center", fontsize=7,
                        color="#9a5317")
    ax.set_yticks(y)
    ax.set_yticklabels(rows["title"])
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(lo_lim, hi_lim * 1.25)
    ci = defs.get("ci", 0.95)
    ax.set_xlabel(f"relative change of share, % ({defs.get('b', 'B')} vs {defs.get('a', 'A')}); "
                  f"bars {ci:.0%} bootstrap interval; (count A/count B)")
    ax.set_title(title or f"Category shift, share {defs.get('share', '')}", fontsize=10)
    if refs and ax.get_legend_handles_labels()[1]:
        ax.legend(loc="lower right", fontsize=8, title="hatched: secondary summaries", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
