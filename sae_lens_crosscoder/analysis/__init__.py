"""Diff analysis of a trained crosscoder: which latents belong to which model.

    sae-lens-crosscoder analyze --crosscoder DIR (--activations CACHE | --config RUN_CONFIG) --out OUT

or `analyze(crosscoder_dir, out, AnalysisConfig(...), activations=cache)`. One streaming,
unshuffled pass over the activations (up to a token budget) computes per-latent firing
statistics, Latent Scaling for every latent, per-model evals (and CE/KL splices when live
models are given) and max-activating / quantile examples.

Output layout in OUT (an interface: the labelling step reads it):

- `latents.parquet`, `latents.csv`: one row per latent. Columns `latent`, `dec_norm_<model>`
  (every model), `delta_norm` (compared pair: 0 = first only, 1 = second only), `cos_sim`,
  `freq`, `max_act`, `mean_act`, `nu_error`, `nu_reconstruction` (Latent Scaling of the
  second model relative to the first), their `_rank`s, `nu_error_reverse`,
  `nu_reconstruction_reverse` (first relative to second), `beta_error_<model>`,
  `beta_reconstruction_<model>` (pair), `designated_shared`, and `class`: `shared`,
  `only:<model name>` or `other`. See `latent_table`.
- `examples.jsonl`: one JSON object per latent (all latents, or `example_latents`):
  `{"latent": int, "top": [example...], "quantiles": [{"low": float, "high": float,
  "examples": [example...]}...]}`, example = `{"tokens": [str...], "acts": [float...],
  "center": int, "value": float, "sequence": int, "position": int}`; `tokens[center]` is the
  token the example is about, `acts` the latent's activation on each token of the window.
  `top` is in descending value, `quantiles` in ascending activation. See `examples`.
- `summary.json`: crosscoder, model names, compared pair, source, `token_budget`,
  `n_tokens`, `rule`, `thresholds`, `class_counts`, `evals` (`l0`, `dead_fraction`,
  `per_model.<model>`: `fve`, `mse`, `mse_raw`, and with models `ce_clean`, `ce_spliced`,
  `ce_zero_ablation`, `ce_delta`, `ce_recovered`, `kl_spliced`, `kl_zero_ablation`),
  timing, and the `AnalysisConfig` as `config`.
- `delta_norm_hist.png`, `nu_scatter.png`, `cos_sim_shared.png`.
- `report.html`: self-contained; `build_report(OUT)` rebuilds it and includes every fragment
  in `OUT/report_sections/*.html` (sorted by name).

For training checkpoints, `checkpoint_evaluator(...)` returns an evaluator that computes the
same per-model evals on held-out data and can log them to W&B.
"""

from __future__ import annotations

from sae_lens_crosscoder.analysis.config import AnalysisConfig, SelectionThresholds
from sae_lens_crosscoder.analysis.evals import checkpoint_evaluator, evaluate_batches, splice_evals, splice_losses
from sae_lens_crosscoder.analysis.latent_scaling import LatentScalingAccumulator, LatentScalingResult, compute_latent_scaling
from sae_lens_crosscoder.analysis.latent_table import build_latent_table, classify
from sae_lens_crosscoder.analysis.pipeline import AnalysisResult, analyze, load_crosscoder
from sae_lens_crosscoder.analysis.report import build_report
from sae_lens_crosscoder.analysis.sources import CacheSource, LiveSource, SourceBatch

__all__ = [
    "AnalysisConfig",
    "AnalysisResult",
    "CacheSource",
    "LatentScalingAccumulator",
    "LatentScalingResult",
    "LiveSource",
    "SelectionThresholds",
    "SourceBatch",
    "analyze",
    "build_latent_table",
    "build_report",
    "checkpoint_evaluator",
    "classify",
    "evaluate_batches",
    "compute_latent_scaling",
    "load_crosscoder",
    "splice_evals",
    "splice_losses",
]
