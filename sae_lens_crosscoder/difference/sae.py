"""Difference SAEs on disk: recognising one, loading it, and the model pair it was trained on.

A difference SAE is a plain SAELens SAE whose `cfg.json` records, under
`metadata.difference_of`, the pair whose activation difference it was trained on
(`{"base": name, "finetuned": name}`: it encodes x[finetuned] - x[base]) and, under
`metadata.model_names`, every model of its training data in data order (see runner.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


import sae_lens_crosscoder  # noqa: F401  (registers the crosscoder architectures)
from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.loading import load_saved_sae, read_sae_cfg

logger = logging.getLogger(__name__)

DIFFERENCE_KEY = "difference_of"


@dataclass
class DifferencePair:
    """The SAE encodes x[finetuned] - x[base]; model_names are its training data's models."""

    base: str
    finetuned: str
    model_names: list[str]

    @property
    def label(self) -> str:
        return f"{self.finetuned} − {self.base}"

    def indices(self, names: list[str]) -> tuple[int, int]:
        """(base, finetuned) positions in a source whose models are `names`."""
        missing = [n for n in (self.base, self.finetuned) if n not in names]
        if missing:
            raise CrosscoderUserError(
                f"the difference SAE was trained on {self.label} but the activations hold models "
                f"{', '.join(names)} (no {', '.join(missing)}); analyse it on the paired data it was trained on"
            )
        return names.index(self.base), names.index(self.finetuned)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Any, where: str) -> DifferencePair:
        meta = dict(metadata) if metadata is not None else {}
        pair = meta.get(DIFFERENCE_KEY)
        if not isinstance(pair, dict) or not pair.get("base") or not pair.get("finetuned"):
            raise CrosscoderUserError(
                f"{where} records no difference pair (metadata.{DIFFERENCE_KEY}); it is not a difference SAE — "
                "train one with `mode: difference`"
            )
        names = [str(n) for n in meta.get("model_names") or [pair["base"], pair["finetuned"]]]
        return cls(str(pair["base"]), str(pair["finetuned"]), names)


def is_difference_sae(path: str | Path) -> bool:
    cfg = read_sae_cfg(path)
    return bool(cfg and isinstance(cfg.get("metadata"), dict) and cfg["metadata"].get(DIFFERENCE_KEY))


def load_difference_sae(path: str | Path, device: str = "cpu") -> tuple[Any, DifferencePair]:
    """A difference SAE saved in SAELens's format and the pair it was trained on."""
    sae, cfg = load_saved_sae(path, device, what="difference SAE")
    pair = DifferencePair.from_metadata(cfg.get("metadata"), str(path))
    check_plain_sae(sae, str(path))
    return sae, pair


def check_plain_sae(sae: Any, where: str) -> None:
    if isinstance(sae, CrosscoderMixin):
        raise CrosscoderUserError(
            f"{where} is a crosscoder, not a difference SAE; analyse it with --crosscoder, or pass it as --join-crosscoder"
        )
