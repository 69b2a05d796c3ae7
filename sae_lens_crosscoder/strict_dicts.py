"""Dataclasses from user-written mappings: unknown keys are one-line errors that suggest
the nearest valid key, so a typo in a config never silently does nothing."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import fields
from typing import Any, TypeVar

from sae_lens_crosscoder.errors import CrosscoderUserError

T = TypeVar("T")


def suggest(name: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dataclass_from_dict(cls: type[T], raw: Any, what: str) -> T:
    """``cls(**raw)``, with a mapping check, unknown keys named with a suggestion and the
    valid keys listed, and constructor type errors turned into user errors."""
    if not isinstance(raw, dict):
        raise CrosscoderUserError(f"a {what} must be a mapping, got {type(raw).__name__}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise CrosscoderUserError(
                f"{what}: unknown key {key!r}{suggest(key, known)}; valid keys: {', '.join(known)}"
            )
    try:
        return cls(**raw)
    except TypeError as exc:
        raise CrosscoderUserError(f"{what}: {exc}") from None
