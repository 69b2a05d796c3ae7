"""Latent Scaling (Minder et al. 2025), streamed, for every latent.

For latent j and a direction d (a decoder vector of latent j), the least-squares scalar of
a target y over tokens n is

    beta = d . (sum_n f_nj y_n) / (||d||^2 sum_n f_nj^2).

Because d is fixed, d . sum_n f_nj y_n = sum_n f_nj (d . y_n) can be reduced to one number
per batch, so the state is a few scalars per latent, never a [d_sae, d_model] matrix. Within
a batch, sum_n f_nj y_n is formed for a chunk of latents at a time (a [chunk, 4 * d_model]
block: 4 targets of the compared pair), which bounds memory by the chunk size.

Targets for model m (in the crosscoder's normalised space, i.e. activations times the
per-model scaling factors):
  reconstruction  y = xhat^m
  error           y = (x^m - xhat^m) + f_j d_j^m   (model m's own decoder)
The error target's extra term contributes (d . d_j^m) sum_n f_nj^2 in closed form.

Both directions are computed: d = d_j^second gives nu = beta_first / beta_second (the usual
"is this second-model latent really absent from the first model?"), and d = d_j^first gives
the reverse ratios used for first-model-only candidates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

try:
    import scipy.sparse as _scipy_sparse
except ImportError:  # the torch path below is exact too, only slower on CPU
    _scipy_sparse = None  # type: ignore[assignment]

# target order inside the accumulator
RECON_FIRST, RECON_SECOND, ERROR_FIRST, ERROR_SECOND = range(4)
# direction order: decoder of the first model, decoder of the second
DIR_FIRST, DIR_SECOND = range(2)

DENSE_DENSITY = 0.05  # above this fraction of non-zeros a dense matmul beats the sparse one


def auto_chunk_size(d_model: int, n_latents: int) -> int:
    """About 8M floats per [chunk, 4 * d_model] block."""
    return max(1, min(n_latents, (1 << 23) // (4 * d_model)))


def sparse_transposed_products(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    n_rows: int,
    n_latents: int,
    targets: torch.Tensor,
    chunk_size: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(lo, hi, F[:, lo:hi]^T @ targets) for each chunk of latents, F given by its
    non-zeros (rows ascending). Latent chunks with no non-zero are skipped.

    On CPU this uses scipy's CSR kernels: single-threaded, no comparison sort, and far
    faster than torch's sparse CPU ops, which slow down badly on a busy machine."""
    if targets.device.type == "cpu" and _scipy_sparse is not None:
        indptr = torch.zeros(n_rows + 1, dtype=torch.long)
        indptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
        by_row = _scipy_sparse.csr_matrix(
            (vals.numpy(), cols.numpy(), indptr.numpy()), shape=(n_rows, n_latents)
        )
        by_latent = by_row.T.tocsr()  # counting-sort transpose: [n_latents, n_rows]
        y = targets.numpy()
        for lo in range(0, n_latents, chunk_size):
            hi = min(lo + chunk_size, n_latents)
            part = by_latent[lo:hi]  # [chunk, n_rows]
            if part.nnz:
                yield lo, hi, torch.from_numpy(part @ y)
        return
    order = torch.argsort(cols, stable=True)  # rows stay ascending within a latent
    rows_s, cols_s, vals_s = rows[order], cols[order], vals[order]
    starts = torch.arange(0, n_latents + chunk_size, chunk_size, device=cols.device)
    bounds = torch.searchsorted(cols_s, starts).tolist()
    for i, lo in enumerate(range(0, n_latents, chunk_size)):
        hi = min(lo + chunk_size, n_latents)
        a, b = bounds[i], bounds[i + 1]
        if a == b:
            continue
        sparse = torch.sparse_coo_tensor(
            torch.stack([cols_s[a:b] - lo, rows_s[a:b]]),
            vals_s[a:b],
            size=(hi - lo, n_rows),
            is_coalesced=True,
            check_invariants=False,
        )
        yield lo, hi, torch.sparse.mm(sparse, targets)


@dataclass
class LatentScalingResult:
    """Per-latent betas ([d_sae] each; NaN where a latent never fired or its direction is 0)."""

    beta_reconstruction: dict[str, torch.Tensor]  # keys "first", "second"; d = second's decoder
    beta_error: dict[str, torch.Tensor]
    beta_reconstruction_reverse: dict[str, torch.Tensor]  # d = first's decoder
    beta_error_reverse: dict[str, torch.Tensor]

    @property
    def nu_reconstruction(self) -> torch.Tensor:
        return self.beta_reconstruction["first"] / self.beta_reconstruction["second"]

    @property
    def nu_error(self) -> torch.Tensor:
        return self.beta_error["first"] / self.beta_error["second"]

    @property
    def nu_reconstruction_reverse(self) -> torch.Tensor:
        return self.beta_reconstruction_reverse["second"] / self.beta_reconstruction_reverse["first"]

    @property
    def nu_error_reverse(self) -> torch.Tensor:
        return self.beta_error_reverse["second"] / self.beta_error_reverse["first"]


class LatentScalingAccumulator:
    """Streams Latent Scaling sums for all latents of a crosscoder over batches.

    decoder: [d_sae, n_models, d_model] in the normalised space; pair: (first, second).
    """

    def __init__(self, decoder: torch.Tensor, pair: tuple[int, int], chunk_size: int | None = None) -> None:
        first, second = pair
        self.directions = decoder[:, [first, second]].detach().float()  # [d_sae, 2, d_model]
        self.pair = pair
        self.n_latents, _, self.d_model = self.directions.shape
        self.chunk_size = chunk_size or auto_chunk_size(self.d_model, self.n_latents)
        device = decoder.device
        # proj[j, target, direction] = sum_n f_nj (d_j^direction . y^target_n)
        self.proj = torch.zeros(self.n_latents, 4, 2, dtype=torch.float64, device=device)
        self.sum_f2 = torch.zeros(self.n_latents, dtype=torch.float64, device=device)

    def chunks(self) -> Iterator[tuple[int, int]]:
        for lo in range(0, self.n_latents, self.chunk_size):
            yield lo, min(lo + self.chunk_size, self.n_latents)

    @torch.no_grad()
    def update(
        self,
        feature_acts: torch.Tensor,
        x: torch.Tensor,
        recon: torch.Tensor,
        row_mask: torch.Tensor | None = None,
        nonzeros: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """feature_acts [R, d_sae]; x, recon [R, n_models, d_model] (normalised space).

        row_mask [R]: the rows (tokens) to count; default all. nonzeros: (rows, cols, vals),
        the non-zeros of feature_acts in those rows in row-major order, if already at hand."""
        if nonzeros is None:
            masked = feature_acts if row_mask is None else feature_acts * row_mask[:, None].to(feature_acts.dtype)
            rows, cols = masked.nonzero(as_tuple=True)
            vals = feature_acts[rows, cols]
        else:
            rows, cols, vals = nonzeros
        if rows.numel() == 0:
            return
        first, second = self.pair
        targets = torch.cat(
            [recon[:, first], recon[:, second], x[:, first] - recon[:, first], x[:, second] - recon[:, second]],
            dim=-1,
        ).float()  # [R, 4 * d_model]
        self.sum_f2.index_add_(0, cols, vals.double().square())
        dense = rows.numel() > DENSE_DENSITY * feature_acts.numel()
        if dense:
            # zero the rows that do not count, then plain matmuls per chunk
            weights = feature_acts if row_mask is None else feature_acts * row_mask[:, None].to(feature_acts.dtype)
            blocks: Iterator[tuple[int, int, torch.Tensor]] = (
                (lo, hi, weights[:, lo:hi].T.float() @ targets)  # [chunk, 4 * d_model]
                for lo, hi in self.chunks()
            )
        else:
            blocks = sparse_transposed_products(
                rows, cols, vals.float(), feature_acts.shape[0], self.n_latents, targets, self.chunk_size
            )
        for lo, hi, block in blocks:
            block = block.view(hi - lo, 4, self.d_model)
            self.proj[lo:hi] += torch.einsum("ctd,cmd->ctm", block, self.directions[lo:hi]).double()

    def result(self) -> LatentScalingResult:
        d = self.directions.double()
        f2 = self.sum_f2
        sq = d.pow(2).sum(-1)  # [d_sae, 2] ||d_first||^2, ||d_second||^2
        cross = (d[:, DIR_FIRST] * d[:, DIR_SECOND]).sum(-1)  # d_first . d_second
        p = self.proj

        def betas(direction: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
            denom = sq[:, direction] * f2
            # error target adds f_j d_j^m: its projection on d is (d . d_j^m) sum f^2
            own_first = sq[:, DIR_FIRST] if direction == DIR_FIRST else cross
            own_second = sq[:, DIR_SECOND] if direction == DIR_SECOND else cross
            recon = {
                "first": p[:, RECON_FIRST, direction] / denom,
                "second": p[:, RECON_SECOND, direction] / denom,
            }
            error = {
                "first": (p[:, ERROR_FIRST, direction] + own_first * f2) / denom,
                "second": (p[:, ERROR_SECOND, direction] + own_second * f2) / denom,
            }
            return recon, error

        recon, error = betas(DIR_SECOND)
        recon_rev, error_rev = betas(DIR_FIRST)
        return LatentScalingResult(recon, error, recon_rev, error_rev)


@torch.no_grad()
def compute_latent_scaling(
    decoder: torch.Tensor,
    feature_acts: torch.Tensor,
    x: torch.Tensor,
    recon: torch.Tensor,
    pair: tuple[int, int] = (0, 1),
    chunk_size: int | None = None,
) -> LatentScalingResult:
    """One-shot Latent Scaling on tensors already in memory (same maths as the stream)."""
    acc = LatentScalingAccumulator(decoder, pair, chunk_size)
    acc.update(feature_acts, x, recon)
    return acc.result()
