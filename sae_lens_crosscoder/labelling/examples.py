"""A latent's activating examples, as the analysis step writes them to ``examples.jsonl``.

One JSON object per line: ``{"latent": int, "top": [example...], "quantiles": [{"low",
"high", "examples": [example...]}...]}``, an example being ``{"tokens": [str], "acts":
[float], "center": int, "value": float, "sequence": int, "position": int}`` where
``center`` indexes the token the example is centred on (its activation is ``value``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError

# Tokenisers mark a leading space with these; text for lexicons and prompts wants a space.
_SPACE_MARKERS = {"▁": " ", "Ġ": " ", "Ċ": "\n"}


def token_text(token: str) -> str:
    for marker, text in _SPACE_MARKERS.items():
        token = token.replace(marker, text)
    return token


@dataclass
class Example:
    tokens: list[str]
    acts: list[float]
    center: int
    value: float
    sequence: int = -1
    position: int = -1

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.acts):
            raise CrosscoderUserError(
                f"an example has {len(self.tokens)} tokens but {len(self.acts)} activations; rewrite examples.jsonl"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Example:
        tokens = [str(t) for t in raw["tokens"]]
        acts = [float(a) for a in raw["acts"]]
        center = int(raw.get("center", max(range(len(acts)), key=acts.__getitem__) if acts else 0))
        value = float(raw.get("value", acts[center] if acts else 0.0))
        return cls(tokens, acts, center, value, int(raw.get("sequence", -1)), int(raw.get("position", -1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuantileBin:
    low: float
    high: float
    examples: list[Example] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QuantileBin:
        return cls(float(raw["low"]), float(raw["high"]), [Example.from_dict(e) for e in raw.get("examples", [])])

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "examples": [e.to_dict() for e in self.examples]}


@dataclass
class LatentExamples:
    latent: int
    top: list[Example] = field(default_factory=list)
    quantiles: list[QuantileBin] = field(default_factory=list)

    def all_examples(self) -> list[Example]:
        return [*self.top, *(e for q in self.quantiles for e in q.examples)]

    @property
    def empty(self) -> bool:
        return not self.top and not any(q.examples for q in self.quantiles)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatentExamples:
        return cls(
            int(raw["latent"]),
            [Example.from_dict(e) for e in raw.get("top", [])],
            [QuantileBin.from_dict(q) for q in raw.get("quantiles", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"latent": self.latent, "top": [e.to_dict() for e in self.top],
                "quantiles": [q.to_dict() for q in self.quantiles]}


def read_examples(path: str | Path, latents: Iterable[int] | None = None) -> dict[int, LatentExamples]:
    """Examples of the given latents (all when None). Lines of other latents are skipped
    before parsing their bodies, so picking 100 latents out of 100k stays cheap."""
    path = Path(path)
    if not path.is_file():
        raise CrosscoderUserError(f"no examples file at {path}; run `sae-lens-crosscoder analyze` to write it")
    wanted = None if latents is None else {int(x) for x in latents}
    out: dict[int, LatentExamples] = {}
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if wanted is not None:
                head = line[:64]
                # the analysis writes "latent" first; fall back to a full parse when it does not
                if head.startswith('{"latent":'):
                    try:
                        latent = int(head[len('{"latent":'):].split(",", 1)[0])
                    except ValueError:
                        latent = None
                    if latent is not None and latent not in wanted:
                        continue
            try:
                item = LatentExamples.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CrosscoderUserError(
                    f"{path}:{line_no} is not a valid examples record ({type(exc).__name__}: {exc}); "
                    "rerun the analysis to rewrite examples.jsonl"
                ) from None
            if wanted is None or item.latent in wanted:
                out[item.latent] = item
    return out


def write_examples(path: str | Path, items: Iterable[LatentExamples]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(item.to_dict()) + "\n")
    return path
