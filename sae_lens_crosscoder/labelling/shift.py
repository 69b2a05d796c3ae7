"""Category shift between two labelled latent sets A and B (for the study: A = it-only
latents of the pt-it crosscoder, B = SimPO-only latents of the pt-SimPO crosscoder).

For each category c of the taxonomy: counts, the shares p_A(c) and p_B(c), the difference
p_B - p_A, the relative change (p_B - p_A) / p_A, and bootstrap percentile intervals for
all of them (latents resampled with replacement within each set, independently).

Share definitions (``share=``):
- ``per_latent``: p_X(c) = (latents of X with a label in c) / (labelled latents of X).
  With several labels per latent the shares can sum to more than 1.
- ``per_label``: p_X(c) = (labels of X in c) / (labels of X). Sums to 1.
``weight="confidence"`` replaces each label's count by its confidence (per_latent: a
latent's membership of c is its highest confidence in c). A parent category counts the
labels of its children too. Latents whose labelling failed are left out of both numerator
and denominator, and counted in the definitions. When p_A(c) = 0 the relative change is
+inf (p_B > 0) or undefined (NaN, p_B = 0); the row's ``note`` says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.labels import FAILED, LABELLED, check_labels_frame
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

if TYPE_CHECKING:
    import pandas as pd

SHARES = ("per_latent", "per_label")
WEIGHTS = ("count", "confidence")
SHARE_DEFINITIONS = {
    "per_latent": "p_X(c) = (latents of X with at least one label in c or its children) / (labelled latents of X)",
    "per_label": "p_X(c) = (labels of X in c or its children) / (labels of X)",
}


@dataclass
class _Set:
    n: int  # labelled latents
    n_failed: int
    n_labels: int
    counts: np.ndarray  # [C] unweighted counts (latents or labels)
    x: np.ndarray  # [n, C] per-latent numerator contributions
    d: np.ndarray  # [n] per-latent denominator contributions


def _prepare(labels: pd.DataFrame, taxonomy: Taxonomy, share: str, weight: str, min_confidence: float, which: str) -> _Set:
    check_labels_frame(labels, f"labels of set {which}")
    labelled_latents = set(labels.loc[labels["status"] == LABELLED, "latent"].astype(int))
    failed = set(labels.loc[labels["status"] == FAILED, "latent"].astype(int)) - labelled_latents
    rows = labels[labels["status"] == LABELLED]
    unknown = sorted(set(rows["category"]) - set(taxonomy.names))
    if unknown:
        raise CrosscoderUserError(
            f"set {which} has categories {unknown} that taxonomy {taxonomy.name!r} lacks; "
            "compare labels made with the same taxonomy"
        )
    latents = sorted(labelled_latents)
    index = {lat: i for i, lat in enumerate(latents)}
    cats = taxonomy.names
    col = {c: j for j, c in enumerate(cats)}
    # direct[i, j]: latent i's labels in category j (count or summed confidence), best[i, j]: max confidence
    n_lab = np.zeros((len(latents), len(cats)))
    conf_sum = np.zeros_like(n_lab)
    conf_max = np.zeros_like(n_lab)
    for lat, cat, conf in zip(rows["latent"].astype(int), rows["category"], rows["confidence"].astype(float)):
        if conf < min_confidence:
            continue
        i, j = index[lat], col[cat]
        n_lab[i, j] += 1
        conf_sum[i, j] += conf
        conf_max[i, j] = max(conf_max[i, j], conf)
    # a latent whose every label fell under min_confidence is "other", not dropped
    orphan = n_lab.sum(1) == 0
    j_other = col[taxonomy.other]
    n_lab[orphan, j_other] = 1
    conf_sum[orphan, j_other] = 1
    conf_max[orphan, j_other] = 1
    # roll children up into their parents
    member = np.zeros((len(cats), len(cats)))  # member[j_direct, j_row] = 1 if direct category counts for row
    for j, c in enumerate(cats):
        for m in taxonomy.members(c):
            member[col[m], j] = 1
    lab_rows = n_lab @ member
    if share == "per_latent":
        counts = (lab_rows > 0).sum(0).astype(float)
        if weight == "count":
            x = (lab_rows > 0).astype(float)
        else:
            x = np.stack([(conf_max * member[:, j]).max(1) for j in range(len(cats))], axis=1)
        d = np.ones(len(latents))
    else:
        counts = lab_rows.sum(0)
        x = lab_rows if weight == "count" else conf_sum @ member
        d = n_lab.sum(1) if weight == "count" else conf_sum.sum(1)
    return _Set(len(latents), len(failed), int(n_lab.sum()), counts, x, d)


def _shares(s: _Set, resample: np.ndarray | None = None) -> np.ndarray:
    """Shares for the point estimate (resample None) or per bootstrap replicate
    (resample: [B, n] multiplicities of each latent)."""
    if resample is None:
        return s.x.sum(0) / s.d.sum()
    num = resample @ s.x
    den = (resample @ s.d)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _relative(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pa > 0, (pb - pa) / np.where(pa > 0, pa, 1), np.where(pb > 0, np.inf, np.nan))


def _interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval by order statistics (no interpolation, so +inf replicates give
    an infinite bound instead of NaN); undefined (NaN) replicates are left out."""
    alpha = (1 - ci) / 2
    lo = np.full(samples.shape[1], np.nan)
    hi = np.full(samples.shape[1], np.nan)
    for j in range(samples.shape[1]):
        col = samples[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            lo[j] = np.quantile(col, alpha, method="lower")
            hi[j] = np.quantile(col, 1 - alpha, method="higher")
    return lo, hi


def category_shift(
    labels_a: pd.DataFrame,
    labels_b: pd.DataFrame,
    taxonomy: Taxonomy,
    *,
    share: str = "per_latent",
    weight: str = "count",
    n_bootstrap: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    min_confidence: float = 0.0,
    names: tuple[str, str] = ("A", "B"),
) -> pd.DataFrame:
    """One row per category of the taxonomy; the definitions used are in
    ``frame.attrs["definitions"]`` (and the ``share`` / ``weight`` columns)."""
    import pandas as pd

    if share not in SHARES:
        raise CrosscoderUserError(f"share={share!r}: use one of {', '.join(SHARES)}")
    if weight not in WEIGHTS:
        raise CrosscoderUserError(f"weight={weight!r}: use one of {', '.join(WEIGHTS)}")
    if not 0 < ci < 1:
        raise CrosscoderUserError(f"ci={ci} must lie strictly between 0 and 1 (e.g. 0.95)")
    if n_bootstrap < 0:
        raise CrosscoderUserError(f"n_bootstrap={n_bootstrap} must be >= 0")
    sa = _prepare(labels_a, taxonomy, share, weight, min_confidence, names[0])
    sb = _prepare(labels_b, taxonomy, share, weight, min_confidence, names[1])
    for s, name in ((sa, names[0]), (sb, names[1])):
        if s.n == 0:
            raise CrosscoderUserError(
                f"set {name} has no labelled latents ({s.n_failed} failed); label it before comparing"
            )
    pa, pb = _shares(sa), _shares(sb)
    rel = _relative(pa, pb)
    n_cat = len(taxonomy.names)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    undefined_frac = np.zeros(n_cat)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        ra = rng.multinomial(sa.n, np.full(sa.n, 1 / sa.n), size=n_bootstrap).astype(float)
        rb = rng.multinomial(sb.n, np.full(sb.n, 1 / sb.n), size=n_bootstrap).astype(float)
        ba, bb = _shares(sa, ra), _shares(sb, rb)
        brel = _relative(ba, bb)
        undefined_frac = np.isnan(brel).mean(0)
        bounds = {"share_a": _interval(ba, ci), "share_b": _interval(bb, ci), "diff": _interval(bb - ba, ci),
                  "rel_change": _interval(brel, ci)}
        inf_frac = np.isinf(brel).mean(0)
    else:
        inf_frac = np.zeros(n_cat)
    nan = np.full(n_cat, np.nan)

    def bound(key: str, k: int) -> np.ndarray:
        return bounds[key][k] if bounds else nan

    notes = []
    for j in range(n_cat):
        parts = []
        if pa[j] == 0 and pb[j] > 0:
            parts.append(f"absent from {names[0]}: relative change infinite")
        elif pa[j] == 0:
            parts.append("absent from both sets: relative change undefined")
        elif inf_frac[j] > 0 or undefined_frac[j] > 0:
            parts.append(f"{inf_frac[j] + undefined_frac[j]:.0%} of bootstrap replicates had p_{names[0]} = 0")
        notes.append("; ".join(parts))
    frame = pd.DataFrame({
        "category": taxonomy.names,
        "title": [c.display for c in taxonomy.categories],
        "parent": [c.parent or "" for c in taxonomy.categories],
        "count_a": sa.counts.astype(int), "count_b": sb.counts.astype(int),
        "n_a": sa.n, "n_b": sb.n,
        "share_a": pa, "share_a_lo": bound("share_a", 0), "share_a_hi": bound("share_a", 1),
        "share_b": pb, "share_b_lo": bound("share_b", 0), "share_b_hi": bound("share_b", 1),
        "diff": pb - pa, "diff_lo": bound("diff", 0), "diff_hi": bound("diff", 1),
        "rel_change": rel, "rel_change_lo": bound("rel_change", 0), "rel_change_hi": bound("rel_change", 1),
        "share": share, "weight": weight, "note": notes,
    })
    frame.attrs["definitions"] = {
        "a": names[0], "b": names[1],
        "share": share, "share_definition": SHARE_DEFINITIONS[share], "weight": weight,
        "relative_change": "(p_B(c) - p_A(c)) / p_A(c); +inf when p_A(c) = 0 < p_B(c), NaN when both are 0",
        "counts": "latents with the category" if share == "per_latent" else "labels in the category",
        "parents": "a parent category counts the labels of its children",
        "failed": "latents whose labelling failed are excluded from numerators and denominators",
        "min_confidence": min_confidence,
        "bootstrap": f"{n_bootstrap} replicates, latents resampled with replacement within each set independently; "
                     f"{ci:.0%} percentile intervals (order statistics, undefined replicates left out)",
        "n_bootstrap": n_bootstrap, "seed": seed, "ci": ci,
        "n_latents_a": sa.n, "n_failed_a": sa.n_failed, "n_labels_a": sa.n_labels,
        "n_latents_b": sb.n, "n_failed_b": sb.n_failed, "n_labels_b": sb.n_labels,
        "taxonomy": taxonomy.name, "taxonomy_hash": taxonomy.fingerprint(),
    }
    return frame


# ---- output ---------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class ReferenceValue:
    """A published relative change for a category, to show beside the measured one."""

    category: str
    value: float | None  # percent; None when only the direction is published
    direction: str | None = None  # "up" | "down"
    provenance: str = ""
    label: str = ""


def shift_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict("records")]


def write_shift(out_dir: str | Path, frame: pd.DataFrame, references: list[ReferenceValue] | None = None,
                title: str | None = None) -> dict[str, Path]:
    """shift.csv, shift.json (definitions, rows, references) and shift.png in `out_dir`."""
    from sae_lens_crosscoder.labelling.charts import plot_shift

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "shift.csv", "json": out / "shift.json", "png": out / "shift.png"}
    frame.to_csv(paths["csv"], index=False)
    payload = {
        "definitions": frame.attrs.get("definitions", {}),
        "rows": shift_records(frame),
        "references": [r.__dict__ for r in references or []],
    }
    paths["json"].write_text(json.dumps(payload, indent=2))
    plot_shift(frame, references or [], paths["png"], title=title)
    return paths


def read_shift(path: str | Path) -> tuple[pd.DataFrame, list[ReferenceValue]]:
    """The shift table and references from a shift.json (or the directory holding it)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "shift.json"
    if not path.is_file():
        raise CrosscoderUserError(f"no shift results at {path}; run `sae-lens-crosscoder shift` first")
    payload = json.loads(path.read_text())
    rows = [{k: (float(v) if v in ("inf", "-inf") else (np.nan if v is None and k not in ("note",) else v))
             for k, v in row.items()} for row in payload["rows"]]
    frame = pd.DataFrame(rows)
    frame.attrs["definitions"] = payload.get("definitions", {})
    return frame, [ReferenceValue(**r) for r in payload.get("references", [])]
