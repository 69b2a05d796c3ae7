"""Per-model evals of a crosscoder: reconstruction metrics and CE/KL when spliced into models.

Reconstruction metrics are computed in the crosscoder's normalised space (activations times
the per-model scaling factors), where training measured them: fve (fraction of variance
explained), mse (squared error summed over d_model, mean over tokens; `mse_raw` is the same
in the model's own units), the crosscoder's L0 and the fraction of dead latents.

Splicing: model m is run on the tokens with its activation at its hook replaced by the
crosscoder's reconstruction of model m (the crosscoder sees every model's activations on
the same tokens), at included tokens only. CE is next-token cross-entropy, KL is
KL(clean || patched) per position; both are averaged over positions whose token is
included (mask) and that have a next token. Zero-ablation replaces the same activations by
zeros. ce_recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.reconstruction import ReconstructionSums


class ReconstructionStats(ReconstructionSums):
    """Reconstruction sums over counted rows, summarised per model name, with the MSE also
    in each model's own units."""

    def __init__(self, n_models: int, scaling_factors: torch.Tensor) -> None:
        super().__init__(n_models)
        self.scale_sq = scaling_factors.detach().double().cpu().square()

    def summary(self, model_names: Sequence[str], dead_fraction: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"n_tokens": self.tokens, "l0": self.l0()}
        if dead_fraction is not None:
            out["dead_fraction"] = dead_fraction
        mse, fve = self.mse(), self.fve()
        out["per_model"] = {
            name: {"fve": float(fve[m]), "mse": float(mse[m]), "mse_raw": float(mse[m] / self.scale_sq[m])}
            for m, name in enumerate(model_names)
        }
        return out


# ---- splicing ----------------------------------------------------------------------------
def _replace_hook(values: torch.Tensor | None, mask: torch.Tensor) -> Callable[..., torch.Tensor]:
    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        out = act.clone()
        flat = out.view(*out.shape[:2], -1)
        m = mask.to(act.device)
        if values is None:
            flat[m] = 0.0
        else:
            flat[m] = values.to(act.device, act.dtype).reshape(*out.shape[:2], -1)[m]
        return out

    return hook


@torch.no_grad()
def splice_losses(
    model: Any, hook_name: str, tokens: torch.Tensor, replacement: torch.Tensor | None, mask: torch.Tensor
) -> dict[str, float]:
    """Sums over counted positions of CE (clean, spliced, zero-ablated) and KL(clean || x).

    replacement: [batch, ctx, d] activations spliced in at `hook_name` where mask is True
    (None: splice zeros, i.e. the zero-ablation itself)."""
    device = getattr(getattr(model, "cfg", None), "device", None) or tokens.device
    tokens = tokens.to(device)
    mask = mask.to(device, torch.bool)
    loss_mask = mask[:, :-1]
    targets = tokens[:, 1:]

    def log_probs(hooks: list[tuple[str, Callable[..., torch.Tensor]]]) -> torch.Tensor:
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
        return torch.log_softmax(logits[:, :-1].double(), dim=-1)

    clean = log_probs([])
    spliced = log_probs([(hook_name, _replace_hook(replacement, mask))])
    zero = log_probs([(hook_name, _replace_hook(None, mask))])

    def ce(lp: torch.Tensor) -> float:
        return float(-lp.gather(-1, targets[..., None])[..., 0][loss_mask].sum())

    def kl(lp: torch.Tensor) -> float:
        return float((clean.exp() * (clean - lp)).sum(-1)[loss_mask].sum())

    return {
        "ce_clean": ce(clean),
        "ce_spliced": ce(spliced),
        "ce_zero_ablation": ce(zero),
        "kl_spliced": kl(spliced),
        "kl_zero_ablation": kl(zero),
        "n_positions": float(loss_mask.sum()),
    }


@torch.no_grad()
def splice_evals(
    crosscoder: CrosscoderMixin,
    models: Sequence[Any],
    hook_names: Sequence[str],
    tokens: torch.Tensor,
    mask: torch.Tensor,
    paired_acts: torch.Tensor,
) -> list[dict[str, float]]:
    """splice_losses for every model: model m gets the reconstruction of model m from the
    crosscoder applied to all models' activations ([batch, ctx, n_models, d_model], raw)."""
    device = crosscoder.W_dec.device
    recon = crosscoder.reconstruct(paired_acts.to(device, crosscoder.W_dec.dtype))  # type: ignore[attr-defined]
    return [
        splice_losses(model, hook_names[m], tokens, recon[:, :, m], mask) for m, model in enumerate(models)
    ]


class SpliceStats:
    """Sums of splice_losses over batches, per model."""

    KEYS = ("ce_clean", "ce_spliced", "ce_zero_ablation", "kl_spliced", "kl_zero_ablation", "n_positions")

    def __init__(self, n_models: int) -> None:
        self.sums = [dict.fromkeys(self.KEYS, 0.0) for _ in range(n_models)]

    def update(self, per_model: list[dict[str, float]]) -> None:
        for sums, new in zip(self.sums, per_model):
            for key in self.KEYS:
                sums[key] += new[key]

    @property
    def n_positions(self) -> int:
        return int(self.sums[0]["n_positions"]) if self.sums else 0

    def summary(self, model_names: Sequence[str]) -> dict[str, dict[str, float]]:
        out = {}
        for name, sums in zip(model_names, self.sums):
            n = max(sums["n_positions"], 1.0)
            avg = {k: sums[k] / n for k in self.KEYS if k != "n_positions"}
            gap = avg["ce_zero_ablation"] - avg["ce_clean"]
            out[name] = {
                **avg,
                "ce_delta": avg["ce_spliced"] - avg["ce_clean"],
                "ce_recovered": (avg["ce_zero_ablation"] - avg["ce_spliced"]) / gap if abs(gap) > 1e-12 else float("nan"),
                "n_positions": int(sums["n_positions"]),
            }
        return out


# ---- evals over held-out batches (training checkpoints) -------------------------------------
@torch.no_grad()
def evaluate_batches(
    crosscoder: CrosscoderMixin,
    batches: Sequence[Any],
    model_names: Sequence[str],
    models: Sequence[Any] | None = None,
    hook_names: Sequence[str] | None = None,
    ce_eval_tokens: int = 0,
) -> dict[str, Any]:
    """Reconstruction metrics (and CE/KL when models are given) on `SourceBatch`es."""
    if not isinstance(crosscoder, CrosscoderMixin):
        raise CrosscoderUserError("evals need a crosscoder (an SAE with a model axis)")
    device, dtype = crosscoder.W_dec.device, crosscoder.W_dec.dtype
    stats = ReconstructionStats(crosscoder.n_models, crosscoder.activation_scaling_factors)
    splice = SpliceStats(crosscoder.n_models)
    fired = torch.zeros(crosscoder.cfg.d_sae, dtype=torch.bool, device=device)
    scale = crosscoder._flat_scale(torch.zeros((), dtype=dtype, device=device))
    for batch in batches:
        core = batch.core.to(device)
        x = batch.acts.to(device, dtype)[core]
        f = crosscoder.encode(x)  # type: ignore[attr-defined]
        recon = crosscoder.decode_normalized(f).unflatten(-1, (crosscoder.n_models, -1))
        x_norm = (x.flatten(1) * scale).unflatten(-1, (crosscoder.n_models, -1))
        active = f != 0
        fired |= active.any(0)
        stats.update(x_norm, recon, int(active.sum()))
        if models and hook_names and batch.token_batch is not None and splice.n_positions < ce_eval_tokens:
            acts = batch.acts.view(*batch.token_batch.shape, crosscoder.n_models, -1)
            splice.update(splice_evals(crosscoder, models, hook_names, batch.token_batch, batch.token_mask, acts))
    summary = stats.summary(model_names, dead_fraction=float((~fired).float().mean()))
    if splice.n_positions:
        for name, values in splice.summary(model_names).items():
            summary["per_model"][name].update(values)
    return summary


def flatten_evals(summary: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """{"eval/l0": ..., "eval/fve/<model>": ..., ...} for W&B."""
    flat = {f"{prefix}{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    for name, values in summary.get("per_model", {}).items():
        for key, value in values.items():
            flat[f"{prefix}{key}/{name}"] = float(value)
    return flat


def checkpoint_evaluator(
    source: Any,
    n_tokens: int = 65_536,
    batch_tokens: int = 4096,
    model_names: Sequence[str] | None = None,
    ce_eval_tokens: int = 0,
    prefix: str = "eval/",
    log_to_wandb: bool = False,
) -> Callable[..., dict[str, float]]:
    """An evaluator for training checkpoints: per-model evals on a fixed held-out set.

    `source` is an analysis source (`CacheSource` on a held-out cache, or `LiveSource`,
    whose models also give CE/KL). The first `n_tokens` tokens are read once, at the first
    call. The returned callable takes the crosscoder (extra positional arguments are
    ignored, so it fits SAELens's `Evaluator(sae, data_provider, activation_scaler)`
    signature) plus an optional `step`, and returns flat metrics; with log_to_wandb it also
    logs them to the active W&B run at that step."""
    held: list[Any] | None = None
    models = getattr(source, "models", None)
    hook_names = getattr(source, "hook_names", None)

    def evaluate(sae: Any, *_: Any, step: int | None = None) -> dict[str, float]:
        nonlocal held
        if held is None:
            held = list(source.batches(n_tokens, batch_tokens, window=0))
        names = list(model_names or source.model_names or [f"model{m}" for m in range(sae.n_models)])
        was_training = sae.training
        sae.eval()
        try:
            summary = evaluate_batches(sae, held, names, models, hook_names, ce_eval_tokens)
        finally:
            sae.train(was_training)
        flat = flatten_evals(summary, prefix)
        if log_to_wandb:
            import wandb

            if wandb.run is not None:
                wandb.log(flat, step=step)
        return flat

    return evaluate
