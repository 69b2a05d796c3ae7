"""``sae-lens-crosscoder label --analysis DIR --taxonomy NAME --labeller rules|llm|manual``

Selects latents of an analysis (by default the fine-tuned model's exclusive latents under
the Latent Scaling rule), labels them with categories of a taxonomy, and writes
``labels.parquet`` (default ``DIR/labels.parquet``) plus a report section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.options import add_labeller_arguments, make_labeller, options_from_args
from sae_lens_crosscoder.labelling.selection import RULES, SelectionRule


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--analysis", required=True, help="analysis directory (latents.parquet, examples.jsonl)")
    parser.add_argument("--taxonomy", default="capabilities-v1", help="registered taxonomy name or a YAML/JSON file")
    parser.add_argument("--out", help="labels table to write (default DIR/labels.parquet)")
    parser.add_argument("--set-name", help="name of this latent set in reports (default: the output file's stem)")
    sel = parser.add_argument_group("selection")
    sel.add_argument("--select", choices=RULES, default="latent_scaling",
                     help="which latents: Latent Scaling ratios, delta_norm, the analysis's class column, the most "
                          "frequent (e.g. a difference SAE's), or all")
    sel.add_argument("--model", help="whose exclusive latents (default: the last, fine-tuned, model)")
    sel.add_argument("--nu-error-max", type=float, default=0.2)
    sel.add_argument("--nu-reconstruction-max", type=float, default=0.5)
    sel.add_argument("--delta-norm-min", type=float)
    sel.add_argument("--max-latents", type=int, help="keep only the N most exclusive latents")
    sel.add_argument("--latents", help="explicit comma-separated latent ids (overrides --select)")
    add_labeller_arguments(parser)
    parser.add_argument("--no-report", action="store_true", help="do not write the report section")


def parse_latents(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CrosscoderUserError(f"--latents {text!r} must be comma-separated integers, e.g. 3,17,42") from None


def run(args: argparse.Namespace) -> int:
    from sae_lens_crosscoder.labelling.report_section import rebuild_report
    from sae_lens_crosscoder.labelling.run import label_analysis
    from sae_lens_crosscoder.labelling.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(args.taxonomy)
    selection = SelectionRule(rule=args.select, model=args.model, nu_error_max=args.nu_error_max,
                              nu_reconstruction_max=args.nu_reconstruction_max, delta_norm_min=args.delta_norm_min,
                              max_latents=args.max_latents)
    labeller = make_labeller(args.labeller, options_from_args(args, args.labeller))
    result = label_analysis(args.analysis, taxonomy, labeller, selection, latents=parse_latents(args.latents),
                            out=args.out, set_name=args.set_name, report=not args.no_report)
    print(f"labelled {result.n_labelled}/{result.n_latents} latents ({result.n_failed} failed) -> {result.path}")
    if not args.no_report:
        report = rebuild_report(Path(args.analysis))
        if report is not None:
            print(f"report: {report}")
    return 0
