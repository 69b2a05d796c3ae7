"""Streaming reconstruction metrics per model: MSE, fraction of variance explained, L0.

One accumulator serves the training loop (per-step metrics, checkpoint windows) and the
analysis pass. Sums are kept in float64 on the data's device, so a training step adds no
host synchronisation; they reach the host only when a summary is read.
"""

from __future__ import annotations

import torch


class ReconstructionSums:
    """Per-model sums of squared error, activations and squared norms over the rows seen.

    MSE is the squared error summed over d_model and averaged over rows; FVE is
    1 - MSE / (total variance of the model's activations)."""

    def __init__(self, n_models: int) -> None:
        self.n_models = n_models
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.sq_err = torch.zeros(self.n_models, dtype=torch.float64)
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = torch.zeros(self.n_models, dtype=torch.float64)
        self.active: torch.Tensor | int = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, recon: torch.Tensor, n_active: torch.Tensor | int = 0) -> None:
        """x, recon: ``[rows, n_models * d_model]`` (model-major) or ``[rows, n_models,
        d_model]``; n_active: non-zero latent activations in those rows."""
        x64 = x.detach().reshape(x.shape[0], self.n_models, -1).double()
        r64 = recon.detach().reshape(x.shape[0], self.n_models, -1).double()
        if self.sq_err.device != x64.device:
            self.sq_err, self.sum_sq = self.sq_err.to(x64.device), self.sum_sq.to(x64.device)
        self.tokens += x.shape[0]
        self.sq_err += (r64 - x64).pow(2).sum(-1).sum(0)
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += x64.pow(2).sum(-1).sum(0)
        self.active = self.active + n_active

    def mse(self) -> torch.Tensor:
        return self.sq_err.cpu() / max(self.tokens, 1)

    def variance(self) -> torch.Tensor:
        n = max(self.tokens, 1)
        mean = self.sum_x.cpu() / n if self.sum_x is not None else torch.zeros(self.n_models, 1, dtype=torch.float64)
        return self.sum_sq.cpu() / n - mean.pow(2).sum(-1)

    def fve(self) -> torch.Tensor:
        return 1.0 - self.mse() / self.variance().clamp(min=1e-12)

    def l0(self) -> float:
        return float(self.active) / max(self.tokens, 1)

    def by_model_index(self) -> dict[str, float]:
        """``mse_model<m>`` and ``fve_model<m>`` for every model."""
        mse, fve = self.mse(), self.fve()
        out: dict[str, float] = {}
        for m in range(self.n_models):
            out[f"mse_model{m}"] = float(mse[m])
            out[f"fve_model{m}"] = float(fve[m])
        return out
