"""``sae-lens-crosscoder shift --a LABELS --b LABELS [--out DIR]``

Category shift of set B relative to set A (each a labels.parquet, or a directory holding
one): ``shift.csv``, ``shift.json`` and ``shift.png`` in ``--out``; with ``--diff NAME``
the registered diff's published values are drawn beside the measured ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.shift import SHARES, WEIGHTS, ReferenceValue
from sae_lens_crosscoder.labelling.taxonomy import Taxonomy

if TYPE_CHECKING:
    import pandas as pd


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--a", required=True, help="labels of the reference set A (labels.parquet or its directory)")
    parser.add_argument("--b", required=True, help="labels of the compared set B")
    parser.add_argument("--name-a", help="display name of A (default: the set name recorded in its labels)")
    parser.add_argument("--name-b", help="display name of B")
    parser.add_argument("--taxonomy", help="taxonomy name or file (default: the one the labels were made with)")
    parser.add_argument("--share", choices=SHARES, default="per_latent",
                        help="per_latent: fraction of latents with the category; per_label: fraction of labels")
    parser.add_argument("--weight", choices=WEIGHTS, default="count", help="count labels, or weight by confidence")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="ignore labels below this confidence")
    parser.add_argument("--n-bootstrap", type=int, default=2000)
    parser.add_argument("--ci", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diff", help="registered diff whose reference results to show beside the measured shift")
    parser.add_argument("--out", default="shift", help="output directory (default ./shift)")
    parser.add_argument("--report-into", action="append", default=[], metavar="ANALYSIS_DIR",
                        help="also add the shift section to this analysis report (repeatable)")


def run(args: argparse.Namespace) -> int:
    from sae_lens_crosscoder.labelling.labels import read_labels
    from sae_lens_crosscoder.labelling.shift import category_shift, write_shift
    from sae_lens_crosscoder.labelling.taxonomy import load_taxonomy

    labels_a, labels_b = read_labels(args.a), read_labels(args.b)
    taxonomy = load_taxonomy(args.taxonomy) if args.taxonomy else taxonomy_of(labels_a, labels_b)
    name_a = args.name_a or labels_a.attrs["provenance"].get("set") or Path(args.a).stem
    name_b = args.name_b or labels_b.attrs["provenance"].get("set") or Path(args.b).stem
    if name_a == name_b:
        name_a, name_b = f"A ({name_a})", f"B ({name_b})"
    frame = category_shift(labels_a, labels_b, taxonomy, share=args.share, weight=args.weight,
                           n_bootstrap=args.n_bootstrap, seed=args.seed, ci=args.ci,
                           min_confidence=args.min_confidence, names=(name_a, name_b))
    references = []
    if args.diff:
        from sae_lens_crosscoder.diffs.registry import get_diff

        references = get_diff(args.diff).reference_values()
    paths = write_shift(args.out, frame, references)
    for analysis_dir in args.report_into:
        add_shift_section(Path(analysis_dir), frame, references, paths["png"])
    print(frame_summary(frame))
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def taxonomy_of(*frames: pd.DataFrame) -> Taxonomy:
    """The taxonomy the labels name (they must agree), looked up in the registry."""
    from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy, register_taxonomy

    names: set[str] = set()
    for frame in frames:
        names |= {n for n in frame["taxonomy"].unique() if isinstance(n, str) and n}
    if len(names) != 1:
        raise CrosscoderUserError(
            f"the labels name taxonomies {sorted(names) or 'none'}; pass --taxonomy NAME to choose one"
        )
    name = names.pop()
    try:
        return get_taxonomy(name)
    except CrosscoderUserError:
        # a taxonomy registered in another process travels in the labels' provenance
        stored = frames[0].attrs.get("provenance", {}).get("taxonomy")
        if isinstance(stored, dict) and stored.get("name") == name:
            return register_taxonomy(Taxonomy.from_dict(stored))
        raise


def add_shift_section(analysis_dir: Path, frame: pd.DataFrame, references: list[ReferenceValue], png: Path) -> None:
    from sae_lens_crosscoder.labelling.report_section import rebuild_report, shift_section_html, write_section

    write_section(analysis_dir, "50_category_shift", shift_section_html(frame, references, png))
    rebuild_report(analysis_dir)


def frame_summary(frame: pd.DataFrame) -> str:
    from sae_lens_crosscoder.labelling.report_section import format_pct

    defs = frame.attrs["definitions"]
    lines = [f"{defs['b']} vs {defs['a']} (share {defs['share']}, n = {defs['n_latents_b']} vs {defs['n_latents_a']})"]
    for row in frame.to_dict("records"):
        if row["count_a"] + row["count_b"]:
            lines.append(f"  {row['title']:<40} {row['count_a']:>4} {row['count_b']:>4}  {format_pct(row['rel_change']):>8} "
                         f"[{format_pct(row['rel_change_lo'])}, {format_pct(row['rel_change_hi'])}]")
    return "\n".join(lines)
