"""Latents against known ground truth: where does each latent fire, compared with the
positions where a planted behaviour acts?

For a behaviour b (a bool mask over token positions) and a latent j (fires where its
activation > 0), over the valid positions: precision = |fire_j ∧ b| / |fire_j|, recall =
|fire_j ∧ b| / |b|. The best latent of a candidate set is the one with the highest F1; a
behaviour counts as recovered when that latent fires *mainly* on the behaviour (precision
≥ 0.5) and covers a fair part of it (recall ≥ 0.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

RECOVERED_PRECISION = 0.5
RECOVERED_RECALL = 0.2


@dataclass
class BehaviourMatch:
    behaviour: str
    latent: int | None
    precision: float
    recall: float
    f1: float
    n_positions: int  # positions where the behaviour acts
    n_candidates: int  # latents searched
    recovered: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FiringOverlap:
    """Per-latent firing counts and their overlap with each behaviour's positions."""

    fires: torch.Tensor  # [d_sae]
    overlap: dict[str, torch.Tensor]  # behaviour -> [d_sae]
    positions: dict[str, int]  # behaviour -> number of positions
    n_valid: int

    def match(self, behaviour: str, candidates: Sequence[int] | None = None) -> BehaviourMatch:
        ids = torch.arange(self.fires.numel()) if candidates is None else torch.as_tensor(list(candidates), dtype=torch.long)
        n_pos = self.positions[behaviour]
        if ids.numel() == 0 or n_pos == 0:
            return BehaviourMatch(behaviour, None, 0.0, 0.0, 0.0, n_pos, int(ids.numel()), False)
        tp = self.overlap[behaviour][ids].double()
        fires = self.fires[ids].double()
        precision = torch.where(fires > 0, tp / fires.clamp(min=1), torch.zeros_like(tp))
        recall = tp / n_pos
        f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
        best = int(f1.argmax())
        p, r = float(precision[best]), float(recall[best])
        return BehaviourMatch(
            behaviour, int(ids[best]) if f1[best] > 0 else None, p, r, float(f1[best]), n_pos, int(ids.numel()),
            p >= RECOVERED_PRECISION and r >= RECOVERED_RECALL,
        )


@torch.no_grad()
def firing_overlap(
    encode: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    valid: torch.Tensor,
    masks: dict[str, torch.Tensor],
    batch_rows: int = 32,
) -> FiringOverlap:
    """`inputs` [n, ctx, ...] go through `encode` (-> [n, ctx, d_sae]) in row batches;
    `valid` [n, ctx] marks the positions that count (not padding or excluded tokens)."""
    fires: torch.Tensor | None = None
    overlap: dict[str, torch.Tensor] = {}
    for start in range(0, inputs.shape[0], batch_rows):
        rows = slice(start, start + batch_rows)
        acts = encode(inputs[rows])
        fired = ((acts > 0) & valid[rows, :, None]).flatten(0, 1).float()
        fires = fired.sum(0) if fires is None else fires + fired.sum(0)
        for name, mask in masks.items():
            hit = (mask[rows] & valid[rows]).flatten().float() @ fired
            overlap[name] = hit if name not in overlap else overlap[name] + hit
    assert fires is not None
    positions = {name: int((mask & valid).sum()) for name, mask in masks.items()}
    return FiringOverlap(fires.long(), {k: v.long() for k, v in overlap.items()}, positions, int(valid.sum()))
