"""`sae-lens-crosscoder analyze`: the command-line face of `analysis.analyze`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_lens_crosscoder.analysis.config import AnalysisConfig, SelectionThresholds
from sae_lens_crosscoder.difference.command import add_join_arguments
from sae_lens_crosscoder.errors import CrosscoderUserError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crosscoder", "--sae", dest="crosscoder", required=True,
                        help="directory of a trained crosscoder, or of a difference SAE (SAELens format)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--activations", help="paired activation cache to analyse on")
    source.add_argument("--config", help="run config with the models and dataset (live activations, CE/KL evals)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-tokens", type=int, default=None, help="token budget (default: whole cache / 1M live)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--pair", default="0,1", help="compared models, indices or names: FIRST,SECOND")
    parser.add_argument("--rule", choices=["minder", "latent_scaling"], default="minder",
                        help="minder: delta-norm and nu cuts; latent_scaling: nu cuts alone")
    defaults = SelectionThresholds()
    parser.add_argument("--delta-norm-exclusive", type=float, default=defaults.delta_norm_exclusive)
    parser.add_argument("--nu-error-max", type=float, default=defaults.nu_error_max)
    parser.add_argument("--nu-reconstruction-max", type=float, default=defaults.nu_reconstruction_max)
    parser.add_argument("--shared-band", default=f"{defaults.shared_low},{defaults.shared_high}",
                        help="delta-norm band of shared latents: LOW,HIGH")
    parser.add_argument("--latent-chunk-size", type=int, default=None)
    parser.add_argument("--n-top-examples", type=int, default=10)
    parser.add_argument("--window", type=int, default=8, help="context tokens each side of an example")
    parser.add_argument("--n-quantiles", type=int, default=4)
    parser.add_argument("--examples-per-quantile", type=int, default=3)
    parser.add_argument("--example-latents", default=None,
                        help="comma-separated latents to collect examples for, or a file with one per line")
    parser.add_argument("--ce-eval-tokens", type=int, default=16_384, help="tokens for CE/KL splicing (live only)")
    parser.add_argument("--report-max-cards", type=int, default=200)
    parser.add_argument("--tokenizer", default=None, help="local tokenizer directory for decoding cached tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    parser.add_argument("--no-progress", action="store_true")
    add_join_arguments(parser)


def _floats(text: str, what: str, n: int) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise CrosscoderUserError(f"{what} {text!r} must be {n} comma-separated numbers") from None
    if len(values) != n:
        raise CrosscoderUserError(f"{what} {text!r} must be {n} comma-separated numbers")
    return values


def _latents(text: str | None) -> list[int] | None:
    if text is None:
        return None
    path = Path(text)
    items = path.read_text().split() if path.is_file() else text.split(",")
    try:
        return [int(v) for v in items if v.strip()]
    except ValueError:
        raise CrosscoderUserError(f"--example-latents {text!r}: give integers, comma-separated or one per line") from None


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    pair = [p.strip() for p in args.pair.split(",")]
    if len(pair) != 2:
        raise CrosscoderUserError(f"--pair {args.pair!r} must be two models, e.g. 0,1 or base,chat")
    low, high = _floats(args.shared_band, "--shared-band", 2)
    thresholds = SelectionThresholds(
        delta_norm_exclusive=args.delta_norm_exclusive,
        nu_error_max=args.nu_error_max,
        nu_reconstruction_max=args.nu_reconstruction_max,
        shared_low=low,
        shared_high=high,
    )
    return AnalysisConfig(
        n_tokens=args.n_tokens,
        batch_tokens=args.batch_tokens,
        pair=[int(p) if p.lstrip("-").isdigit() else p for p in pair],
        rule=args.rule,
        thresholds=thresholds,
        latent_chunk_size=args.latent_chunk_size,
        n_top_examples=args.n_top_examples,
        window=args.window,
        n_quantiles=args.n_quantiles,
        examples_per_quantile=args.examples_per_quantile,
        example_latents=_latents(args.example_latents),
        ce_eval_tokens=args.ce_eval_tokens,
        report_max_cards=args.report_max_cards,
        device=args.device,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from sae_lens_crosscoder.analysis.pipeline import analyze
    from sae_lens_crosscoder.analysis.sources import LiveSource, load_tokenizer, open_live_store
    from sae_lens_crosscoder.difference import command as difference
    from sae_lens_crosscoder.difference.sae import is_difference_sae

    cfg = config_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    is_difference = is_difference_sae(args.crosscoder)
    if not is_difference:
        difference.check_crosscoder_args(args)
    activations, source = args.activations, None
    if not args.activations:
        from sae_lens_crosscoder.config import CrosscoderRunnerConfig

        run_cfg = CrosscoderRunnerConfig.from_file(args.config)
        if run_cfg.cached_activations_path and not run_cfg.dataset_path and not run_cfg.datasets:
            activations = run_cfg.cached_activations_path
        else:
            source = LiveSource(open_live_store(run_cfg), model_names=run_cfg.model_names or None)
    if is_difference:
        result = difference.run_difference(args, cfg, tokenizer, activations, source)
    else:
        result = analyze(args.crosscoder, args.out, cfg, activations=activations, source=source, tokenizer=tokenizer,
                         make_report=not args.no_report)
    summary = result.summary
    counts = summary.get("join", {}).get("verdict_counts", summary["class_counts"])
    print(f"analysed {summary['n_tokens']} tokens -> {result.out_dir} | {json.dumps(counts)}")
    return 0
