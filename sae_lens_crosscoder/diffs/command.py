"""``sae-lens-crosscoder diff NAME`` runs a registered diff end to end (cache or live
training, analysis, labelling, shift, report), skipping steps whose artifacts exist;
``diff --list`` shows the registered diffs, ``diff NAME --show`` one diff with its resolved
run configs, ``diff NAME --dry-run`` what would run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from sae_lens_crosscoder.diffs.pipeline import STEPS
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.options import add_labeller_arguments, options_from_args
from sae_lens_crosscoder.labelling.shift import SHARES, WEIGHTS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="registered diff (see --list)")
    parser.add_argument("--list", action="store_true", help="list the registered diffs")
    parser.add_argument("--show", action="store_true", help="print the diff and its resolved run configs as JSON")
    parser.add_argument("--dry-run", action="store_true", help="show which steps would run, run nothing")
    parser.add_argument("--out", help="output root (default: the diff's, runs/<name>)")
    parser.add_argument("--force", action="store_true", help="rerun every step")
    parser.add_argument("--redo", action="append", default=[], choices=STEPS,
                        help="rerun this step (and what depends on it); repeatable")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[CROSSCODER:]KEY=VALUE",
                        help="run-config override for every crosscoder and difference SAE, or one (e.g. pt-it:training_tokens=1e6)")
    parser.add_argument("--share", choices=SHARES, help="share definition for the shift (default: the diff's)")
    parser.add_argument("--weight", choices=WEIGHTS, help="count labels or weight them by confidence")
    parser.add_argument("--n-bootstrap", type=int)
    add_labeller_arguments(parser, default=None)


def split_overrides(
    items: list[str], crosscoders: list[str], differences: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Per-spec overrides. An untargeted key=value applies to every crosscoder and difference
    SAE, except crosscoder keys (architecture, l1_coefficient, ...), which a difference SAE
    takes only when targeted at it."""
    from sae_lens_crosscoder.diffs.registry import CROSSCODER_ONLY_KEYS

    out: dict[str, list[str]] = {name: [] for name in [*crosscoders, *differences]}
    for item in items:
        if "=" not in item:
            raise CrosscoderUserError(f"--set {item!r} is not [CROSSCODER:]KEY=VALUE; write e.g. --set lr=1e-4")
        key, value = item.split("=", 1)
        if ":" in key:
            target, key = key.split(":", 1)
            if target not in out:
                raise CrosscoderUserError(f"--set {item!r}: no crosscoder {target!r}; this diff has {', '.join(out)}")
            out[target].append(f"{key}={value}")
        else:
            for name in out:
                if not (name in differences and key.strip() in CROSSCODER_ONLY_KEYS):
                    out[name].append(item)
    return out


def run(args: argparse.Namespace) -> int:
    from sae_lens_crosscoder.diffs.pipeline import run_diff
    from sae_lens_crosscoder.diffs.registry import LabellerSpec, get_diff, list_diffs

    if args.list:
        for name in list_diffs():
            diff = get_diff(name)
            sets = f"{diff.set_b.name} vs {diff.set_a.name}"
            differences = f"; difference SAEs: {', '.join(d.name for d in diff.difference_saes)}" if diff.difference_saes else ""
            print(f"{name}\n    {diff.description}\n    crosscoders: {', '.join(c.name for c in diff.crosscoders)}{differences}; "
                  f"sets: {sets}; taxonomy {diff.taxonomy}; {len(diff.references)} reference results")
        return 0
    if not args.name:
        raise CrosscoderUserError("name a diff (sae-lens-crosscoder diff NAME) or pass --list")
    diff = get_diff(args.name)
    overrides = split_overrides(args.overrides, [c.name for c in diff.crosscoders], [d.name for d in diff.difference_saes])
    if args.show:
        configs = diff.run_configs(args.out, overrides)
        print(json.dumps({"diff": diff.to_dict(), "root": str(diff.root(args.out)),
                          "run_configs": {k: v.to_dict() for k, v in configs.items()}}, indent=2))
        return 0
    labeller = None
    kind = args.labeller or diff.labeller.kind
    base = diff.labeller.options if kind == diff.labeller.kind else {}
    options = options_from_args(args, kind, base)
    if args.labeller or options != diff.labeller.options:
        labeller = LabellerSpec(kind, options)
    result = run_diff(diff, root=args.out, force=args.force, redo=args.redo, labeller=labeller,
                      config_overrides=overrides, share=args.share, weight=args.weight,
                      n_bootstrap=args.n_bootstrap, dry_run=args.dry_run)
    for record in result.records:
        took = f" in {record.seconds:.1f}s" if record.status == "ran" else ""
        print(f"{record.step:<8} {record.target:<16} {record.status}{took} ({record.reason})")
    if result.report is not None and not args.dry_run:
        print(f"report: {result.report}")
    return 0
