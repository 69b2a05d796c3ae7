"""Which latents of an analysis get labelled: the selection rules.

- ``latent_scaling`` (the study's rule, Minder et al. 2025): latents exclusive to a
  model by their Latent Scaling ratios, ``nu_error < nu_error_max`` and
  ``nu_reconstruction < nu_reconstruction_max`` (defaults 0.2 and 0.5), optionally also
  ``delta_norm >= delta_norm_min``. For the pair's second (fine-tuned) model the ratios
  are ``nu_*``; for the first (base) model ``nu_*_reverse`` and ``delta_norm <= 1 - min``.
  Recomputed here from the ratios, so it does not depend on the rule the analysis used for
  its ``class`` column.
- ``delta_norm``: ``delta_norm >= delta_norm_min`` (default 0.9) for the second model,
  ``<= 1 - delta_norm_min`` for the first.
- ``class``: the analysis's own ``class`` column equals ``only:<model>``.
- ``frequency``: latents that fired in the analysis (``freq > 0``), most frequent first;
  with ``max_latents``, the top n by frequency. The rule for a difference SAE's analysis
  (``summary.json`` kind ``difference``), whose latents have no model to be exclusive to.
- ``all``: every latent.

``max_latents`` keeps the most exclusive ones (lowest ``nu_error``, or highest / lowest
``delta_norm``), which bounds what an LLM labeller costs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sae_lens_crosscoder.errors import CrosscoderUserError

if TYPE_CHECKING:
    import pandas as pd

RULES = ("latent_scaling", "delta_norm", "class", "frequency", "all")
DIFFERENCE_RULES = ("frequency", "all")


@dataclass
class SelectionRule:
    rule: Literal["latent_scaling", "delta_norm", "class", "frequency", "all"] = "latent_scaling"
    model: str | None = None  # whose exclusive latents; None = the last (fine-tuned) model
    nu_error_max: float = 0.2
    nu_reconstruction_max: float = 0.5
    delta_norm_min: float | None = None  # latent_scaling: optional extra cut; delta_norm: default 0.9
    max_latents: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise CrosscoderUserError(f"unknown selection rule {self.rule!r}; use one of {', '.join(RULES)}")
        if self.max_latents is not None and self.max_latents <= 0:
            raise CrosscoderUserError(f"max_latents={self.max_latents} must be positive")

    def describe(self) -> str:
        if self.rule == "latent_scaling":
            text = f"nu_error < {self.nu_error_max} and nu_reconstruction < {self.nu_reconstruction_max}"
            if self.delta_norm_min is not None:
                text += f" and delta_norm >= {self.delta_norm_min}"
        elif self.rule == "delta_norm":
            text = f"delta_norm >= {self.delta_norm_min if self.delta_norm_min is not None else 0.9}"
        elif self.rule == "class":
            text = f"class == only:{self.model or '<fine-tuned model>'}"
        elif self.rule == "frequency":
            text = "latents that fired, most frequent first"
        else:
            text = "all latents"
        return text + (f", at most {self.max_latents}" if self.max_latents else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SelectionRule:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise CrosscoderUserError(f"selection rule: unknown key(s) {sorted(unknown)}; use {sorted(known)}")
        return cls(**raw)


@dataclass
class AnalysisDir:
    """An analysis output directory, validated: latents.parquet and examples.jsonl present."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_dir():
            raise CrosscoderUserError(
                f"analysis directory {self.path} does not exist; run `sae-lens-crosscoder analyze` or fix --analysis"
            )
        for name in ("latents.parquet", "examples.jsonl"):
            if not (self.path / name).is_file():
                raise CrosscoderUserError(
                    f"{self.path} has no {name}; it is not a finished analysis directory (run `sae-lens-crosscoder analyze`)"
                )

    @property
    def summary(self) -> dict[str, Any]:
        file = self.path / "summary.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def latents(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.read_parquet(self.path / "latents.parquet")
        if "latent" not in frame.columns:
            raise CrosscoderUserError(f"{self.path / 'latents.parquet'} has no 'latent' column; rerun the analysis")
        return frame

    def model_names(self, frame: pd.DataFrame | None = None) -> list[str]:
        names = self.summary.get("model_names")
        if names:
            return list(names)
        frame = self.latents() if frame is None else frame
        return [c[len("dec_norm_"):] for c in frame.columns if c.startswith("dec_norm_")]

    def pair(self, frame: pd.DataFrame | None = None) -> tuple[str, str] | None:
        """(first, second) of the compared pair: delta_norm 0 = first only, 1 = second only."""
        pair = self.summary.get("pair")
        if isinstance(pair, dict) and pair.get("first") and pair.get("second"):
            return str(pair["first"]), str(pair["second"])
        names = self.model_names(frame)
        return (names[0], names[-1]) if len(names) >= 2 else None


def select_latents(analysis: AnalysisDir, rule: SelectionRule) -> list[int]:
    """The latents a rule picks from an analysis, most exclusive first."""
    frame = analysis.latents()
    models = analysis.model_names(frame)
    pair = analysis.pair(frame)
    if rule.model is not None and models and rule.model not in models:
        raise CrosscoderUserError(
            f"model {rule.model!r} is not in this analysis (models: {', '.join(models)}); name one of them"
        )
    if analysis.summary.get("kind") == "difference" and rule.rule not in DIFFERENCE_RULES:
        raise CrosscoderUserError(
            f"{analysis.path} analyses a difference SAE, whose latents are not exclusive to a model; select "
            f"with rule {' or '.join(DIFFERENCE_RULES)} (--select frequency --max-latents N: the N most frequent)"
        )
    model = rule.model if rule.model is not None else (pair[1] if pair else None)
    is_first = pair is not None and model == pair[0]
    if pair is not None and model not in pair and rule.rule in ("latent_scaling", "delta_norm"):
        raise CrosscoderUserError(
            f"model {model!r} is not in the analysed pair {list(pair)}; the {rule.rule} rule compares the pair"
        )

    if rule.rule == "all":
        picked = frame.sort_values("latent")
    elif rule.rule == "frequency":
        if "freq" not in frame.columns:
            raise CrosscoderUserError(f"{analysis.path}/latents.parquet has no freq column; rerun the analysis")
        picked = frame[frame["freq"] > 0].sort_values(["freq", "latent"], ascending=[False, True])
    elif rule.rule == "class":
        if "class" not in frame.columns:
            raise CrosscoderUserError(f"{analysis.path}/latents.parquet has no 'class' column; use another rule")
        picked = frame[frame["class"] == f"only:{model}"]
        order = "nu_error_reverse" if is_first else "nu_error"
        if order in picked.columns and picked[order].notna().any():
            picked = picked.sort_values(order, na_position="last")
    elif rule.rule == "latent_scaling":
        suffix = "_reverse" if is_first else ""
        cols = (f"nu_error{suffix}", f"nu_reconstruction{suffix}")
        for col in cols:
            if col not in frame.columns or frame[col].isna().all():
                raise CrosscoderUserError(
                    f"{analysis.path}/latents.parquet has no {col} values; run the analysis with Latent Scaling "
                    "or use --select delta_norm"
                )
        mask = (frame[cols[0]] < rule.nu_error_max) & (frame[cols[1]] < rule.nu_reconstruction_max)
        if rule.delta_norm_min is not None:
            mask &= frame["delta_norm"] <= 1 - rule.delta_norm_min if is_first else frame["delta_norm"] >= rule.delta_norm_min
        picked = frame[mask].sort_values(cols[0])
    else:  # delta_norm
        if "delta_norm" not in frame.columns:
            raise CrosscoderUserError(f"{analysis.path}/latents.parquet has no delta_norm column; rerun the analysis")
        cut = rule.delta_norm_min if rule.delta_norm_min is not None else 0.9
        if is_first:
            picked = frame[frame["delta_norm"] <= 1 - cut].sort_values("delta_norm")
        else:
            picked = frame[frame["delta_norm"] >= cut].sort_values("delta_norm", ascending=False)
    latents = [int(x) for x in picked["latent"]]
    return latents[: rule.max_latents] if rule.max_latents else latents
