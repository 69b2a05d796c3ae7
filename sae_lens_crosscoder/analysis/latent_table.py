"""The per-latent table (`latents.parquet` / `latents.csv`) and the selection rules.

Columns (first = pair[0], second = pair[1]):
  latent                      index
  dec_norm_<model>            ||d_j^m|| in the normalised space, for every model
  delta_norm                  relative decoder norm of the pair: 0 first only, 1 second only
  cos_sim                     cosine of the pair's decoder vectors
  freq, max_act, mean_act     firing frequency, largest activation, mean activation when firing
  nu_error, nu_reconstruction Latent Scaling of the second model relative to the first
                              (beta_first / beta_second, d = second's decoder); ~0: absent
                              from the first model, ~1: present in both
  nu_error_rank, nu_reconstruction_rank  1 = smallest nu (most second-specific); NaN if no nu
  nu_error_reverse, nu_reconstruction_reverse  the same for the first model relative to the
                              second (d = first's decoder), used for first-only latents
  beta_error_<model>, beta_reconstruction_<model>  the betas behind nu, for the pair
  designated_shared           latent belongs to the crosscoder's tied shared block
  class                       "shared", "only:<model name>" or "other"
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sae_lens_crosscoder.analysis.config import SelectionThresholds
from sae_lens_crosscoder.analysis.latent_scaling import LatentScalingResult

SHARED, OTHER = "shared", "other"


def only(model: str) -> str:
    return f"only:{model}"


def build_latent_table(
    decoder: torch.Tensor,
    model_names: list[str],
    pair: tuple[int, int],
    count: torch.Tensor,
    n_tokens: int,
    max_act: torch.Tensor,
    sum_act: torch.Tensor,
    scaling: LatentScalingResult,
    n_designated_shared: int = 0,
) -> pd.DataFrame:
    """decoder: [d_sae, n_models, d_model] normalised-space decoder; count, max_act,
    sum_act: per-latent firing statistics over n_tokens counted tokens."""
    first, second = pair
    norms = decoder.norm(dim=-1).double().cpu()
    a, b = norms[:, first], norms[:, second]
    delta = 0.5 * ((b - a) / torch.maximum(a, b).clamp(min=1e-12) + 1.0)
    cos = torch.nn.functional.cosine_similarity(decoder[:, first].double(), decoder[:, second].double(), dim=-1)
    d_sae = decoder.shape[0]
    data: dict[str, object] = {"latent": np.arange(d_sae, dtype=np.int64)}
    for m, name in enumerate(model_names):
        data[f"dec_norm_{name}"] = norms[:, m].numpy()
    data["delta_norm"] = delta.numpy()
    data["cos_sim"] = cos.cpu().numpy()
    data.update(firing_columns(count, n_tokens, max_act, sum_act))
    data["nu_error"] = scaling.nu_error.cpu().numpy()
    data["nu_reconstruction"] = scaling.nu_reconstruction.cpu().numpy()
    data["nu_error_reverse"] = scaling.nu_error_reverse.cpu().numpy()
    data["nu_reconstruction_reverse"] = scaling.nu_reconstruction_reverse.cpu().numpy()
    for role, m in (("first", first), ("second", second)):
        data[f"beta_error_{model_names[m]}"] = scaling.beta_error[role].cpu().numpy()
        data[f"beta_reconstruction_{model_names[m]}"] = scaling.beta_reconstruction[role].cpu().numpy()
    data["designated_shared"] = np.arange(d_sae) < n_designated_shared
    table = pd.DataFrame(data)
    for column in ("nu_error", "nu_reconstruction"):
        table[f"{column}_rank"] = table[column].rank(method="min", na_option="keep")
    return table


def firing_columns(
    count: torch.Tensor, n_tokens: int, max_act: torch.Tensor, sum_act: torch.Tensor
) -> dict[str, np.ndarray]:
    """freq, max_act and mean_act (mean activation when firing) from the pass's sums."""
    count64 = count.double().cpu()
    return {
        "freq": (count64 / max(n_tokens, 1)).numpy(),
        "max_act": max_act.double().cpu().numpy(),
        "mean_act": torch.where(count64 > 0, sum_act.double().cpu() / count64.clamp(min=1), 0.0).numpy(),
    }


def classify(
    table: pd.DataFrame, first: str, second: str, rule: str, thresholds: SelectionThresholds
) -> pd.Series:
    """Class per latent. rule "minder": delta_norm cut and nu cuts; "latent_scaling": nu cuts
    without the delta_norm cut, each side's nu read only for latents whose decoder leans to
    that side (delta_norm >= 0.5 for the second model, < 0.5 for the first): the other
    side's decoder can be a near-zero vector, whose direction, and so whose nu, is noise.

    The nu cuts bound |nu|: nu near 0 means the other model does not carry the direction,
    while a large negative nu means it carries it with the opposite sign, which is not
    exclusivity. NaN nus (latents that never fired) never meet a nu cut."""
    t = thresholds
    delta = table["delta_norm"]
    second_nu = (table["nu_error"].abs() < t.nu_error_max) & (
        table["nu_reconstruction"].abs() < t.nu_reconstruction_max
    )
    first_nu = (table["nu_error_reverse"].abs() < t.nu_error_max) & (
        table["nu_reconstruction_reverse"].abs() < t.nu_reconstruction_max
    )
    if rule == "minder":
        second_only = second_nu & (delta >= t.delta_norm_exclusive)
        first_only = first_nu & (delta <= 1.0 - t.delta_norm_exclusive)
    else:
        second_only = second_nu & (delta >= 0.5)
        first_only = first_nu & (delta < 0.5)
    shared = (delta >= t.shared_low) & (delta <= t.shared_high)
    classes = np.select(
        [second_only.to_numpy(), first_only.to_numpy(), shared.to_numpy()],
        [only(second), only(first), SHARED],
        default=OTHER,
    )
    return pd.Series(classes, index=table.index, name="class")
