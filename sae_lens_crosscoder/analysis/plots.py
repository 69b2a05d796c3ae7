"""The three pictures people look at first: where latents sit on the relative-norm axis,
whether Latent Scaling agrees, and how aligned the shared latents are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DELTA_NORM_PNG = "delta_norm_hist.png"
NU_SCATTER_PNG = "nu_scatter.png"
COS_SIM_PNG = "cos_sim_shared.png"


def class_colours(classes: list[str]) -> dict[str, str]:
    fixed = {"shared": "#4c72b0", "other": "#b0b0b0"}
    palette = ["#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    out, i = {}, 0
    for c in sorted(classes):
        if c in fixed:
            out[c] = fixed[c]
        else:
            out[c] = palette[i % len(palette)]
            i += 1
    return out


def write_plots(table: pd.DataFrame, summary: dict[str, Any], out_dir: Path) -> list[str]:
    first, second = summary["pair"]["first"], summary["pair"]["second"]
    t = summary["thresholds"]
    colours = class_colours(list(table["class"].unique()) + ["shared", "other"])
    files = []

    fig, ax = plt.subplots(figsize=(7, 4))
    alive = table[table["freq"] > 0]
    ax.hist(alive["delta_norm"], bins=50, range=(0, 1), color="#4c72b0", log=True)
    for x in (1 - t["delta_norm_exclusive"], t["delta_norm_exclusive"]):
        ax.axvline(x, color="#c44e52", ls="--", lw=1)
    ax.axvspan(t["shared_low"], t["shared_high"], color="#4c72b0", alpha=0.08)
    ax.set_xlabel(f"relative decoder norm  (0 = {first} only, 1 = {second} only)")
    ax.set_ylabel("latents (log)")
    ax.set_title(f"Δnorm of {len(alive)} live latents ({len(table) - len(alive)} dead not shown)")
    files.append(save_figure(fig, out_dir / DELTA_NORM_PNG))

    # each side's nu is read for the latents leaning to that side: the other side's decoder
    # may be a near-zero vector whose direction, and so whose nu, is noise
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    clip = (-0.5, 2.0)  # ratios explode where the own model's beta is near 0; keep the interesting range
    panels = (
        (axes[0], table["delta_norm"] >= 0.5, "nu_reconstruction", "nu_error", second, first),
        (axes[1], table["delta_norm"] < 0.5, "nu_reconstruction_reverse", "nu_error_reverse", first, second),
    )
    for ax, leaning, x_col, y_col, own, other in panels:
        subset = table[leaning].dropna(subset=[x_col, y_col])
        for cls, group in subset.groupby("class"):
            ax.scatter(group[x_col].clip(*clip), group[y_col].clip(*clip), s=8, alpha=0.7,
                       color=colours.get(str(cls), "#333333"), label=f"{cls} ({len(group)})")
        ax.axhline(t["nu_error_max"], color="#c44e52", ls="--", lw=1)
        ax.axvline(t["nu_reconstruction_max"], color="#c44e52", ls="--", lw=1)
        ax.set_xlabel(f"ν reconstruction ({other} / {own})")
        ax.set_title(f"{len(subset)} latents leaning to {own} (Δnorm {'≥' if own == second else '<'} 0.5)", fontsize=10)
        if len(subset):
            ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("ν error (other model / own model)")
    fig.suptitle(f"Latent Scaling, clipped to {list(clip)}")
    files.append(save_figure(fig, out_dir / NU_SCATTER_PNG))

    fig, ax = plt.subplots(figsize=(7, 4))
    shared = table.loc[table["class"] == "shared", "cos_sim"].dropna()
    if len(shared):
        ax.hist(shared, bins=50, range=(-1, 1), color="#4c72b0")
        ax.set_title(f"decoder cosine of {len(shared)} shared latents (median {np.median(shared):.3f})")
    else:
        ax.text(0.5, 0.5, "no shared latents", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("decoder cosine of shared latents")
    ax.set_xlabel(f"cos(d_{first}, d_{second})")
    ax.set_ylabel("latents")
    files.append(save_figure(fig, out_dir / COS_SIM_PNG))
    return files


def save_figure(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
