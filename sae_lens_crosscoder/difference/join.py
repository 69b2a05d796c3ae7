"""The join of a difference SAE with a crosscoder of the same pair: does the crosscoder
represent each change the difference SAE found, and where?

Directions. A crosscoder's weights live in its normalised space (architectures/base.py):
model m's raw reconstruction is (Σ_j f_j d_j^m + b^m) / s_m, with s_m its
`activation_scaling_factors[m]`. So the crosscoder's reconstruction of the raw difference
x^ft - x^base is Σ_j f_j Δd_j + Δb with

    Δd_j = d_j^ft / s_ft - d_j^base / s_base,    Δb = b^ft / s_ft - b^base / s_base,

i.e. the decoders are converted to raw activation space *before* the difference is taken
(with unequal scaling factors the normalised-space difference points elsewhere). The
difference SAE works on raw differences, so its decoder rows d_i are compared with Δd_j
directly; u_i = d_i / ||d_i||.

Statistics for difference latent i and crosscoder latent j, over the analysed tokens
(F_i: tokens where i fires, G_j: tokens where j fires):

- cos       cos(u_i, Δd_j): does j's decoder difference point along the change;
- precision |F_i ∩ G_j| / |G_j|, recall |F_i ∩ G_j| / |F_i|, jaccard |F_i ∩ G_j| / |F_i ∪ G_j|;
- carried   Σ_{n∈F_i} f_j(n) <Δd_j, u_i> / Σ_{n∈F_i} <Δx(n), u_i>: the share of the change
            along u_i, on i's tokens, that j's term of the crosscoder reconstructs;
- explained (per difference latent) Σ_{n∈F_i} <Δx̂_cc(n), u_i> / Σ_{n∈F_i} <Δx(n), u_i>: the
            same for the crosscoder's whole reconstruction of the difference (all latents
            and the biases).

Verdict per live difference latent (thresholds in `JoinThresholds`):

- `match`: some crosscoder latent has cos >= cos_min, jaccard >= jaccard_min and carried >=
  carried_min — it points along the change, fires where the change is, and its term
  reconstructs a real part of it (the one with the highest jaccard). The carried cut
  matters: a crosscoder can learn a latent that fires on exactly the changed tokens while
  another latent carries the change itself (measured on a planted template-bound change:
  jaccard 0.70, cos 0.57, carried 0.03);
- `absorbed`: no match, but some crosscoder latent carries >= carried_min of the change
  while firing on >= recall_min of i's tokens — the change is represented inside a latent
  that also fires elsewhere (e.g. the latent of a surrounding template token); the largest
  carrier is reported, with its precision;
- `none`: neither — no good match: the crosscoder does not represent this change.

Only `match` is a good match. Latents that never fired in the analysis get `unfired`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.strict_dicts import dataclass_from_dict

MATCH, ABSORBED, NONE, UNFIRED = "match", "absorbed", "none", "unfired"
VERDICTS = (MATCH, ABSORBED, NONE, UNFIRED)


@dataclass
class JoinThresholds:
    """Cut-offs of the join verdicts (module docstring) and how many candidates per
    difference latent `join.parquet` keeps by each statistic."""

    cos_min: float = 0.5
    jaccard_min: float = 0.5
    carried_min: float = 0.2
    recall_min: float = 0.8
    n_candidates: int = 5

    def __post_init__(self) -> None:
        for name in ("cos_min", "jaccard_min", "carried_min", "recall_min"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise CrosscoderUserError(f"join threshold {name}={value!r} must be a number in [0, 1]")
        if self.n_candidates < 1:
            raise CrosscoderUserError(f"join n_candidates={self.n_candidates} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JoinThresholds:
        return dataclass_from_dict(cls, raw, "join thresholds")


@torch.no_grad()
def raw_decoder_difference(crosscoder: Any, base: int, finetuned: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δd [d_sae, d_model], Δb [d_model]) in raw activation space (module docstring), float32
    on the crosscoder's device; one d_sae x d_model tensor is allocated (a large crosscoder's
    decoder does not fit twice)."""
    n, d = crosscoder.n_models, crosscoder.d_model
    W = crosscoder.decoder().detach().unflatten(-1, (n, d))
    b = crosscoder.b_dec.detach().unflatten(-1, (n, d))
    scale = [float(s) for s in crosscoder.activation_scaling_factors.detach().float().cpu()]
    delta = W[:, finetuned].float() / scale[finetuned]
    delta.sub_(W[:, base].float(), alpha=1.0 / scale[base])
    return delta, b[finetuned].float() / scale[finetuned] - b[base].float() / scale[base]


class CoFiring:
    """Streaming join statistics over the analysed tokens.

    Per difference latent i: Σ<Δx, u_i> and Σ<Δx̂_cc, u_i> over F_i. Per crosscoder latent
    j: |G_j|. Per pair: |F_i ∩ G_j| and Σ_{F_i} f_j, kept as sparse matrices (scipy CSR on
    CPU), built only from tokens where some difference latent fires: a difference SAE is
    silent where the models agree, so this is a small part of the stream."""

    def __init__(self, units: torch.Tensor, d_cc: int) -> None:
        self.units = units  # [d_diff, d_model], on the pass's device
        self.d_diff, self.d_cc = units.shape[0], d_cc
        self.projection = torch.zeros(self.d_diff, dtype=torch.float64)
        self.reconstructed = torch.zeros(self.d_diff, dtype=torch.float64)
        self.cc_count = torch.zeros(d_cc, dtype=torch.long)
        self.cofire = sp.csr_matrix((self.d_diff, d_cc), dtype=np.float64)
        self.carry = sp.csr_matrix((self.d_diff, d_cc), dtype=np.float64)
        self._pending: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        self._pending_nnz = 0

    @torch.no_grad()
    def update(
        self,
        n_rows: int,
        diff: tuple[torch.Tensor, torch.Tensor],
        cc: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        delta: torch.Tensor,
        delta_cc: torch.Tensor,
    ) -> None:
        """diff: (rows, cols) of the counted difference-latent firings; cc: (rows, cols,
        vals) of the counted crosscoder firings; delta, delta_cc: [R, d_model] raw
        difference and the crosscoder's reconstruction of it."""
        d_rows, d_cols = diff
        c_rows, c_cols, c_vals = cc
        self.cc_count += torch.bincount(c_cols.cpu(), minlength=self.d_cc)
        if d_rows.numel() == 0:
            return
        u = self.units[d_cols]
        self.projection.index_add_(0, d_cols.cpu(), (delta[d_rows] * u).sum(-1).double().cpu())
        self.reconstructed.index_add_(0, d_cols.cpu(), (delta_cc[d_rows] * u).sum(-1).double().cpu())
        has_diff = torch.zeros(n_rows, dtype=torch.bool, device=c_rows.device)
        has_diff[d_rows] = True
        keep = has_diff[c_rows]
        if not bool(keep.any()):
            return
        dr, dc = d_rows.cpu().numpy(), d_cols.cpu().numpy()
        cr, cc_, cv = c_rows[keep].cpu().numpy(), c_cols[keep].cpu().numpy(), c_vals[keep].double().cpu().numpy()
        fires_t = sp.csr_matrix((np.ones(dr.size), (dc, dr)), shape=(self.d_diff, n_rows))
        ones = sp.csr_matrix((np.ones(cr.size), (cr, cc_)), shape=(n_rows, self.d_cc))
        values = sp.csr_matrix((cv, (cr, cc_)), shape=(n_rows, self.d_cc))
        pair = (fires_t @ ones, fires_t @ values)
        self._pending.append(pair)
        self._pending_nnz += pair[0].nnz
        if self._pending_nnz > max(1_000_000, self.cofire.nnz):  # amortised: sum when pending outgrows the total
            self._flush()

    def _flush(self) -> None:
        for counts, sums in self._pending:
            self.cofire = self.cofire + counts
            self.carry = self.carry + sums
        self._pending, self._pending_nnz = [], 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, |F_i ∩ G_j|, Σ_{F_i} f_j) over co-firing pairs, in row-major order."""
        self._flush()
        counts = self.cofire.tocoo()
        sums = self.carry.tocsr()
        i, j = counts.row.astype(np.int64), counts.col.astype(np.int64)
        order = np.lexsort((j, i))
        i, j, n = i[order], j[order], counts.data[order]
        carried = np.asarray(sums[i, j]).ravel() if i.size else np.zeros(0)
        return i, j, n, carried


@dataclass
class JoinResult:
    """`latents`: one row per difference latent (the `join_*` columns of latents.parquet);
    `pairs`: the candidate pairs of join.parquet; `summary`: counts for summary.json."""

    latents: pd.DataFrame
    pairs: pd.DataFrame
    summary: dict[str, Any]


@torch.no_grad()
def compute_join(
    stats: CoFiring,
    diff_count: torch.Tensor,
    delta_decoder: torch.Tensor,
    cc_delta_norm: torch.Tensor,
    thresholds: JoinThresholds,
    cc_classes: pd.Series | None = None,
    chunk_elements: int = 8_000_000,
) -> JoinResult:
    """Per-pair statistics, candidates and verdicts from a finished pass. diff_count: |F_i|;
    delta_decoder: Δd [d_cc, d_model] raw; cc_delta_norm: each crosscoder latent's relative
    decoder norm of the pair (0 base only, 1 fine-tuned only); cc_classes: the crosscoder
    analysis's `class` column indexed by latent, if known."""
    delta = delta_decoder.float()
    units = stats.units.detach().float().to(delta.device)
    f_count = diff_count.cpu().numpy().astype(np.float64)
    projection = stats.projection.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        explained = np.where(projection > 0, stats.reconstructed.numpy() / projection, np.nan)
    cofiring = cofiring_table(stats, units, delta, f_count, chunk_elements)
    live = np.flatnonzero(f_count > 0)
    top_cos = top_cosines(units, delta, live, min(thresholds.n_candidates, stats.d_cc), chunk_elements)
    verdict, chosen = verdicts(cofiring, thresholds, live, stats.d_diff)

    d_diff = stats.d_diff
    by_jaccard = cofiring.sort_values(["diff_latent", "jaccard"], ascending=[True, False], kind="stable")
    by_carried = cofiring.sort_values(["diff_latent", "carried"], ascending=[True, False], kind="stable",
                                      na_position="last")
    best_jaccard = by_jaccard.drop_duplicates("diff_latent").set_index("diff_latent")
    best_carrier = by_carried.drop_duplicates("diff_latent").set_index("diff_latent")
    best_cos = top_cos[top_cos["cos_rank"] == 1].set_index("diff_latent")

    def column(table: pd.DataFrame, name: str, fill: float = np.nan) -> np.ndarray:
        out = np.full(d_diff, fill, dtype=np.float64)
        out[table.index.to_numpy(dtype=np.int64)] = table[name].to_numpy(dtype=np.float64)
        return out

    def latent_column(table: pd.DataFrame) -> np.ndarray:
        out = np.full(d_diff, -1, dtype=np.int64)
        out[table.index.to_numpy(dtype=np.int64)] = table["cc_latent"].to_numpy(dtype=np.int64)
        return out

    chosen_stats = {name: np.full(d_diff, np.nan) for name in ("cos", "jaccard", "precision", "recall", "carried")}
    has = np.flatnonzero(chosen >= 0)
    if has.size:
        found = cofiring.set_index(["diff_latent", "cc_latent"]).loc[list(zip(has.tolist(), chosen[has].tolist()))]
        for name in chosen_stats:
            chosen_stats[name][has] = found[name].to_numpy(dtype=np.float64)
    dn = cc_delta_norm.double().cpu().numpy()
    latents = pd.DataFrame({
        "join_verdict": verdict,
        "join_latent": chosen,
        **{f"join_{name}": values for name, values in chosen_stats.items()},
        "join_delta_norm": np.where(chosen >= 0, dn[np.maximum(chosen, 0)], np.nan),
        "join_best_cos_latent": latent_column(best_cos),
        "join_best_cos": column(best_cos, "cos"),
        "join_best_jaccard_latent": latent_column(best_jaccard),
        "join_best_jaccard": column(best_jaccard, "jaccard", 0.0),
        "join_best_carrier_latent": latent_column(best_carrier),
        "join_best_carried": column(best_carrier, "carried"),
        "join_explained": explained,
    })
    if cc_classes is not None:
        classes = cc_classes.reindex(range(stats.d_cc)).astype(object).to_numpy()
        latents["join_class"] = np.where(chosen >= 0, classes[np.maximum(chosen, 0)], None)

    pairs = candidate_pairs(cofiring, top_cos, thresholds.n_candidates, chosen, dn,
                            stats.cc_count.numpy(), cc_classes)
    counts = pd.Series(verdict).value_counts()
    summary = {
        "verdict_counts": {v: int(counts.get(v, 0)) for v in VERDICTS},
        "matched_crosscoder_latents": sorted({int(c) for c, v in zip(chosen, verdict) if v == MATCH}),
        "absorbing_crosscoder_latents": sorted({int(c) for c, v in zip(chosen, verdict) if v == ABSORBED}),
        "n_cofiring_pairs": int(len(cofiring)),
    }
    return JoinResult(latents, pairs, summary)


def cofiring_table(stats: CoFiring, units: torch.Tensor, delta: torch.Tensor, f_count: np.ndarray,
                   chunk_elements: int) -> pd.DataFrame:
    """One row per co-firing (difference latent, crosscoder latent) pair with cos, n_cofire,
    precision, recall, jaccard and carried (module docstring)."""
    i, j, n, summed = stats.pairs()
    along = np.zeros(i.size)  # <u_i, Δd_j>
    step = max(1, chunk_elements // max(1, units.shape[1]))
    for lo in range(0, i.size, step):
        ii = torch.from_numpy(i[lo : lo + step]).to(delta.device)
        jj = torch.from_numpy(j[lo : lo + step]).to(delta.device)
        along[lo : lo + step] = (units[ii] * delta[jj]).sum(-1).double().cpu().numpy()
    delta_norm = delta.norm(dim=-1).clamp(min=1e-12).double().cpu().numpy()
    g_count = stats.cc_count.numpy().astype(np.float64)
    projection = stats.projection.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        carried = np.where(projection[i] > 0, summed * along / projection[i], np.nan)
    return pd.DataFrame({
        "diff_latent": i,
        "cc_latent": j,
        "cos": along / delta_norm[j],
        "n_cofire": n.astype(np.int64),
        "precision": n / np.maximum(g_count[j], 1),
        "recall": n / np.maximum(f_count[i], 1),
        "jaccard": n / np.maximum(f_count[i] + g_count[j] - n, 1),
        "carried": carried,
    })


def top_cosines(units: torch.Tensor, delta: torch.Tensor, live: np.ndarray, k: int,
                chunk_elements: int) -> pd.DataFrame:
    """The k crosscoder latents with the highest cos(u_i, Δd_j) for each live difference
    latent, over every crosscoder latent (co-firing or not), in chunks of difference latents."""
    delta_norm = delta.norm(dim=-1).clamp(min=1e-12)
    parts = []
    rows_per_chunk = max(1, chunk_elements // max(1, delta.shape[0]))
    for lo in range(0, live.size, rows_per_chunk):
        chunk = live[lo : lo + rows_per_chunk]
        index = torch.from_numpy(chunk).to(delta.device)
        values, indices = ((units[index] @ delta.T) / delta_norm).topk(k, dim=-1)
        parts.append(pd.DataFrame({
            "diff_latent": np.repeat(chunk, k),
            "cc_latent": indices.cpu().numpy().ravel(),
            "cos": values.double().cpu().numpy().ravel(),
            "cos_rank": np.tile(np.arange(1, k + 1), chunk.size),
        }))
    empty = pd.DataFrame({"diff_latent": [], "cc_latent": [], "cos": [], "cos_rank": []}).astype(
        {"diff_latent": np.int64, "cc_latent": np.int64, "cos_rank": np.int64})
    return pd.concat(parts, ignore_index=True) if parts else empty


def verdicts(cofiring: pd.DataFrame, thresholds: JoinThresholds, live: np.ndarray,
             d_diff: int) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, chosen crosscoder latent or -1) per difference latent (module docstring)."""
    t = thresholds
    matches = cofiring[(cofiring["cos"] >= t.cos_min) & (cofiring["jaccard"] >= t.jaccard_min)
                       & (cofiring["carried"] >= t.carried_min)]
    absorbers = cofiring[(cofiring["carried"] >= t.carried_min) & (cofiring["recall"] >= t.recall_min)]
    verdict = np.full(d_diff, UNFIRED, dtype=object)
    verdict[live] = NONE
    chosen = np.full(d_diff, -1, dtype=np.int64)
    # the highest jaccard among matches, the largest carrier among absorbers; match wins
    for table, key, name in ((absorbers, "carried", ABSORBED), (matches, "jaccard", MATCH)):
        best = table.sort_values(["diff_latent", key], ascending=[True, False], kind="stable").drop_duplicates(
            "diff_latent")
        idx = best["diff_latent"].to_numpy(dtype=np.int64)
        verdict[idx] = name
        chosen[idx] = best["cc_latent"].to_numpy(dtype=np.int64)
    return verdict.astype(str), chosen


def candidate_pairs(
    cofiring: pd.DataFrame,
    top_cos: pd.DataFrame,
    n: int,
    chosen: np.ndarray,
    cc_delta_norm: np.ndarray,
    cc_count: np.ndarray,
    cc_classes: pd.Series | None,
) -> pd.DataFrame:
    """join.parquet: per difference latent, the top n crosscoder latents by cos, by jaccard
    and by carried share (a union; the ranks say by which), each with every statistic."""
    ranked = cofiring.copy()
    group = ranked.groupby("diff_latent")
    ranked["jaccard_rank"] = group["jaccard"].rank(method="first", ascending=False)
    ranked["carried_rank"] = group["carried"].rank(method="first", ascending=False)
    keep = (ranked["jaccard_rank"] <= n) | (ranked["carried_rank"] <= n)
    pairs = ranked[keep].merge(top_cos, on=["diff_latent", "cc_latent"], how="outer", suffixes=("", "_top"))
    pairs["cos"] = pairs["cos"].fillna(pairs.pop("cos_top"))
    for name in ("n_cofire",):
        pairs[name] = pairs[name].fillna(0).astype(np.int64)
    for name in ("precision", "recall", "jaccard"):
        pairs[name] = pairs[name].fillna(0.0)
    pairs["cc_fires"] = cc_count[pairs["cc_latent"].to_numpy(dtype=np.int64)].astype(np.int64)
    pairs["cc_delta_norm"] = cc_delta_norm[pairs["cc_latent"].to_numpy(dtype=np.int64)]
    if cc_classes is not None:
        pairs["cc_class"] = cc_classes.reindex(pairs["cc_latent"]).to_numpy()
    pairs["verdict_latent"] = chosen[pairs["diff_latent"].to_numpy(dtype=np.int64)] == pairs["cc_latent"].to_numpy()
    columns = ["diff_latent", "cc_latent", "cos", "cos_rank", "n_cofire", "precision", "recall", "jaccard",
               "jaccard_rank", "carried", "carried_rank", "cc_fires", "cc_delta_norm"]
    columns += ["cc_class"] if cc_classes is not None else []
    columns += ["verdict_latent"]
    return pairs[columns].sort_values(["diff_latent", "jaccard", "cos"], ascending=[True, False, False]).reset_index(
        drop=True)
