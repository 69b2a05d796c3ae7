"""The `analyze` command's difference-SAE options and path: `--crosscoder` (or `--sae`) naming
a difference SAE runs `analyze_difference`, joined to `--join-crosscoder` when given."""

from __future__ import annotations

import argparse
from typing import Any

from sae_lens_crosscoder.analysis.config import AnalysisConfig
from sae_lens_crosscoder.difference.join import JoinThresholds
from sae_lens_crosscoder.errors import CrosscoderUserError


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = JoinThresholds()
    group = parser.add_argument_group("difference SAEs (--crosscoder names an SAE trained with mode: difference)")
    group.add_argument("--join-crosscoder", default=None,
                       help="crosscoder of the same pair to join the difference latents to")
    group.add_argument("--join-analysis", default=None,
                       help="that crosscoder's analysis directory: its classes and examples join in, and its "
                            "report gets the side-by-side section")
    group.add_argument("--join-cos-min", type=float, default=defaults.cos_min, help="match: cos(u_i, Δd_j) at least")
    group.add_argument("--join-jaccard-min", type=float, default=defaults.jaccard_min,
                       help="match: jaccard of the firing tokens at least")
    group.add_argument("--join-carried-min", type=float, default=defaults.carried_min,
                       help="match and absorbed: share of the change one crosscoder latent carries, at least")
    group.add_argument("--join-recall-min", type=float, default=defaults.recall_min,
                       help="absorbed: share of the difference latent's tokens the carrier fires on, at least")
    group.add_argument("--join-candidates", type=int, default=defaults.n_candidates,
                       help="candidate crosscoder latents per difference latent and statistic in join.parquet")


def thresholds_from_args(args: argparse.Namespace) -> JoinThresholds:
    return JoinThresholds(cos_min=args.join_cos_min, jaccard_min=args.join_jaccard_min,
                          carried_min=args.join_carried_min, recall_min=args.join_recall_min,
                          n_candidates=args.join_candidates)


def check_crosscoder_args(args: argparse.Namespace) -> None:
    """Join options given for a crosscoder analysis: say what they are for."""
    if args.join_crosscoder or args.join_analysis:
        raise CrosscoderUserError(
            f"--join-crosscoder/--join-analysis apply to difference SAEs, and {args.crosscoder} is not one "
            "(its cfg.json records no metadata.difference_of); pass a difference SAE as --crosscoder"
        )


def run_difference(args: argparse.Namespace, cfg: AnalysisConfig, tokenizer: Any, activations: str | None,
                   source: Any) -> Any:
    from sae_lens_crosscoder.difference.analysis import analyze_difference

    if args.join_analysis and not args.join_crosscoder:
        raise CrosscoderUserError("--join-analysis needs --join-crosscoder (the crosscoder that analysis is of)")
    return analyze_difference(args.crosscoder, args.out, cfg, activations=activations, source=source,
                              tokenizer=tokenizer, join_crosscoder=args.join_crosscoder,
                              join_thresholds=thresholds_from_args(args), crosscoder_analysis=args.join_analysis,
                              make_report=not args.no_report)
