"""Pictures of a difference SAE's analysis: how often its latents fire, and, joined to a
crosscoder, where each one's best crosscoder partner sits against the verdict thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sae_lens_crosscoder.analysis.plots import plt, save_figure
from sae_lens_crosscoder.difference.join import ABSORBED, MATCH, NONE

FREQ_PNG = "difference_freq_hist.png"
JOIN_PNG = "join_scatter.png"
VERDICT_COLOURS = {MATCH: "#55a868", ABSORBED: "#dd8452", NONE: "#c44e52"}


def write_difference_plots(table: pd.DataFrame, summary: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """The plots written, as (file, caption) pairs for the report."""
    label = f"{summary['difference_of']['finetuned']} − {summary['difference_of']['base']}"
    plots = []
    fig, ax = plt.subplots(figsize=(7, 4))
    alive = table[table["freq"] > 0]
    if len(alive):
        ax.hist(np.log10(alive["freq"]), bins=40, color="#4c72b0")
    else:
        ax.text(0.5, 0.5, "no latent fired", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"{len(alive)} live latents on {label} ({len(table) - len(alive)} dead not shown)")
    plots.append((save_figure(fig, out_dir / FREQ_PNG), f"Firing frequency of the difference SAE's live latents ({label})"))

    if "join_verdict" in table.columns:
        t = summary["thresholds"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        live = table[table["join_verdict"] != "unfired"]
        for verdict, colour in VERDICT_COLOURS.items():
            group = live[live["join_verdict"] == verdict]
            axes[0].scatter(group["join_best_cos"], group["join_best_jaccard"], s=14, color=colour,
                            label=f"{verdict} ({len(group)})")
            axes[1].scatter(group["join_best_carried"].clip(-0.5, 1.5), group["join_explained"].clip(-0.5, 1.5), s=14,
                            color=colour, label=f"{verdict} ({len(group)})")
        axes[0].axvline(t["cos_min"], color="#555", ls="--", lw=1)
        axes[0].axhline(t["jaccard_min"], color="#555", ls="--", lw=1)
        axes[0].set_xlabel("best cos(u_i, Δd_j) over crosscoder latents")
        axes[0].set_ylabel("best jaccard of firing sets")
        axes[0].set_xlim(-1.05, 1.05)
        axes[0].set_ylim(-0.05, 1.05)
        axes[1].axvline(t["carried_min"], color="#555", ls="--", lw=1)
        axes[1].set_xlabel("largest share carried by one crosscoder latent")
        axes[1].set_ylabel("share the whole crosscoder reconstructs")
        for ax in axes:
            if len(live):
                ax.legend(fontsize=8, loc="best")
        fig.suptitle("Each difference latent against the crosscoder (verdict thresholds dashed)")
        plots.append((save_figure(fig, out_dir / JOIN_PNG),
                      "Join: best cosine vs best co-firing, and the carried share of the change"))
    return plots
