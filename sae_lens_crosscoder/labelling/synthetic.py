"""Small hand-written analysis directories, in exactly the analysis step's format, for
tests, tutorials and trying the labelling tools without a trained crosscoder.

Examples are written as text with the active words starred: ``"please *translate* this
into *French*"`` activates "translate" and "French" at 1.0; ``*word*:2.5`` sets the
activation. The peak word is the example's centre.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sae_lens_crosscoder.labelling.examples import Example, LatentExamples, QuantileBin, write_examples

_ACTIVE = re.compile(r"^\*(.+)\*(?::([0-9.]+))?$")


def parse_example(text: str, sequence: int = 0) -> Example:
    tokens, acts = [], []
    for i, word in enumerate(text.split(" ")):
        match = _ACTIVE.match(word)
        token = match.group(1) if match else word
        tokens.append(token if i == 0 else " " + token)
        acts.append(float(match.group(2) or 1.0) if match else 0.0)
    center = max(range(len(acts)), key=acts.__getitem__)
    return Example(tokens, acts, center, acts[center], sequence, center)


@dataclass
class SyntheticLatent:
    latent: int
    examples: list[str] = field(default_factory=list)
    klass: str = "other"  # shared | only:<model> | other
    nu_error: float = 1.0
    nu_reconstruction: float = 1.0
    delta_norm: float = 0.5
    nu_error_reverse: float = 1.0  # the first model relative to the second
    nu_reconstruction_reverse: float = 1.0


def write_synthetic_analysis(out: str | Path, model_names: list[str], latents: list[SyntheticLatent]) -> Path:
    """latents.parquet, summary.json and examples.jsonl for the given latents. The first
    half of each latent's examples are its top examples, the rest one quantile bin."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lat in latents:
        dn = lat.delta_norm
        rows.append({
            "latent": lat.latent,
            f"dec_norm_{model_names[0]}": 1.0 - dn, f"dec_norm_{model_names[-1]}": dn,
            "delta_norm": dn, "cos_sim": 0.0, "freq": 0.01, "max_act": 1.0,
            "nu_error": lat.nu_error, "nu_reconstruction": lat.nu_reconstruction,
            "nu_error_reverse": lat.nu_error_reverse, "nu_reconstruction_reverse": lat.nu_reconstruction_reverse,
            "class": lat.klass,
        })
    pd.DataFrame(rows).to_parquet(out / "latents.parquet", index=False)
    counts: dict[str, int] = {}
    for lat in latents:
        counts[lat.klass] = counts.get(lat.klass, 0) + 1
    summary = {"model_names": model_names, "pair": {"first": model_names[0], "second": model_names[-1]},
               "class_counts": counts, "synthetic": True}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    items = []
    for lat in latents:
        parsed = [parse_example(t, s) for s, t in enumerate(lat.examples)]
        half = (len(parsed) + 1) // 2
        top, rest = parsed[:half], parsed[half:]
        quantiles = [QuantileBin(0.0, max((e.value for e in rest), default=0.0), rest)] if rest else []
        items.append(LatentExamples(lat.latent, top, quantiles))
    write_examples(out / "examples.jsonl", items)
    return out
