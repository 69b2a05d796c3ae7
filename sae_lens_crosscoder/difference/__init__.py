"""The difference view: SAELens SAEs trained on x[finetuned] - x[base] (`mode: difference`
in a run config), analysed like crosscoders and joined to a crosscoder of the same pair.

    sae-lens-crosscoder analyze --crosscoder DIFF_SAE_DIR (--activations CACHE | --config RUN) --out OUT \\
        [--join-crosscoder CROSSCODER_DIR [--join-analysis CROSSCODER_ANALYSIS_DIR]]

or `analyze_difference(sae_dir, out, AnalysisConfig(...), activations=cache,
join_crosscoder=crosscoder_dir)`. A difference SAE is recognised by `metadata.difference_of`
in its cfg.json. Why both views: a behaviour that acts at few positions can be absorbed into
crosscoder latents of the surrounding tokens (method.md, "Pitfalls"), while an SAE on the
difference sees it directly; the join says, per change, whether and where the crosscoder
represents it.

Output layout in OUT (the crosscoder analysis's, where it applies; the labelling step reads it):

- `latents.parquet`, `latents.csv`: one row per difference latent: `latent`, `dec_norm`
  (||d_i||, raw difference units), `freq`, `max_act`, `mean_act`, `class` (`difference` if it
  fired in the analysis, else `dead`); joined to a crosscoder also `join_verdict` (`match`,
  `absorbed`, `none`, `unfired`), `join_latent` (the crosscoder latent behind the verdict,
  -1 for none) with its `join_cos`, `join_jaccard`, `join_precision`, `join_recall`,
  `join_carried`, `join_delta_norm` (and `join_class` with the crosscoder's analysis), the
  best crosscoder latent by each statistic (`join_best_cos_latent`/`join_best_cos`,
  `join_best_jaccard_latent`/`join_best_jaccard`, `join_best_carrier_latent`/
  `join_best_carried`) and `join_explained`. Statistics and verdicts: `join`.
- `join.parquet`, `join.csv` (joined): candidate pairs, per difference latent the top
  crosscoder latents by cos, by jaccard and by carried share: `diff_latent`, `cc_latent`,
  `cos`, `cos_rank`, `n_cofire`, `precision`, `recall`, `jaccard`, `jaccard_rank`,
  `carried`, `carried_rank`, `cc_fires`, `cc_delta_norm`, [`cc_class`], `verdict_latent`.
- `examples.jsonl`: exactly the crosscoder analysis's format (max-activating and quantile
  examples of each difference latent).
- `summary.json`: `kind: "difference"`, the SAE, `difference_of`, `model_names`, `pair`
  (first = base, second = fine-tuned), source, `n_tokens`, `class_counts`, `evals`
  (`l0`, `dead_fraction`, `per_model` with `difference SAE` and, joined, `crosscoder`: FVE
  and MSE of each one's reconstruction of the difference), `join` (crosscoder, verdict
  counts, matched and absorbing crosscoder latents), `thresholds` (the join's), timing,
  config, and `report` (the page layout for `build_report`).
- `difference_freq_hist.png`, `join_scatter.png` (joined), `report.html` with the
  side-by-side section `report_sections/40_difference_view.html`, also written into the
  crosscoder's analysis directory when given (`--join-analysis`), whose report is rebuilt.
"""

from __future__ import annotations

from sae_lens_crosscoder.difference.analysis import analyze_difference
from sae_lens_crosscoder.difference.join import JoinThresholds, raw_decoder_difference
from sae_lens_crosscoder.difference.sae import DifferencePair, is_difference_sae, load_difference_sae

__all__ = [
    "DifferencePair",
    "JoinThresholds",
    "analyze_difference",
    "is_difference_sae",
    "load_difference_sae",
    "raw_decoder_difference",
]
