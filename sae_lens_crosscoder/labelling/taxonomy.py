"""Taxonomies: named sets of capability categories that latents are labelled with.

A category has a name (its identifier in label tables), a description (what the LLM
labeller reads), an optional parent (two levels at most) and an optional rule lexicon:
``keywords`` match case-insensitively at the start of a word ("refus" matches "refused",
"math" does not match "aftermath"); ``patterns`` are regular expressions searched
case-insensitively. Every taxonomy has one fallback category (``other``) for latents
nothing else fits, so "no category" is always an explicit answer.

Taxonomies live in a process-wide registry: ``register_taxonomy`` adds one,
``get_taxonomy`` fetches it, the built-in ones (``capabilities-v1``) are registered on
first use.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.strict_dicts import suggest


def normalise_name(text: str) -> str:
    """The form names are compared in: lower case, runs of non-alphanumerics as one '_'.
    LLMs answer "Instruction Following" for `instruction_following`; both normalise alike."""
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    parent: str | None = None
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    title: str | None = None  # display name; defaults to the name

    def __post_init__(self) -> None:
        # lists are accepted for convenience; tuples keep the dataclass hashable
        object.__setattr__(self, "keywords", tuple(self.keywords))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if not self.name or not normalise_name(self.name):
            raise CrosscoderUserError(f"category name {self.name!r} is empty; give each category a name")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise CrosscoderUserError(
                    f"category {self.name!r}: pattern {pattern!r} is not a valid regular expression ({exc}); fix it"
                ) from None

    @property
    def display(self) -> str:
        return self.title or self.name

    @cached_property
    def lexicon(self) -> re.Pattern[str] | None:
        """One compiled regex for all keywords and patterns (None without a lexicon)."""
        parts = [rf"(?<![0-9A-Za-z]){re.escape(k)}" for k in self.keywords if k]
        parts += [f"(?:{p})" for p in self.patterns]
        return re.compile("|".join(parts), re.IGNORECASE | re.MULTILINE) if parts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parent": self.parent,
            "keywords": list(self.keywords),
            "patterns": list(self.patterns),
            "title": self.title,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Category:
        if not isinstance(raw, dict) or "name" not in raw:
            raise CrosscoderUserError(f"a category must be a mapping with at least 'name', got {raw!r}")
        unknown = set(raw) - {"name", "description", "parent", "keywords", "patterns", "title"}
        if unknown:
            raise CrosscoderUserError(
                f"category {raw['name']!r} has unknown key(s) {sorted(unknown)}; "
                "use name, description, parent, keywords, patterns, title"
            )
        return cls(
            name=str(raw["name"]),
            description=str(raw.get("description") or ""),
            parent=raw.get("parent"),
            keywords=tuple(raw.get("keywords") or ()),
            patterns=tuple(raw.get("patterns") or ()),
            title=raw.get("title"),
        )


@dataclass(frozen=True)
class Taxonomy:
    name: str
    categories: tuple[Category, ...]
    description: str = ""
    other: str = "other"  # the fallback category's name

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        self.validate()

    def validate(self) -> None:
        seen: dict[str, str] = {}
        for cat in self.categories:
            key = normalise_name(cat.name)
            if key in seen:
                raise CrosscoderUserError(
                    f"taxonomy {self.name!r}: categories {seen[key]!r} and {cat.name!r} have the same name; rename one"
                )
            seen[key] = cat.name
        by_name = {c.name: c for c in self.categories}
        for cat in self.categories:
            if cat.parent is None:
                continue
            parent = by_name.get(cat.parent)
            if parent is None:
                raise CrosscoderUserError(
                    f"taxonomy {self.name!r}: category {cat.name!r} names parent {cat.parent!r}, which is not a "
                    f"category{_suggest(cat.parent, by_name)}; add it or fix the name"
                )
            if parent.parent is not None:
                raise CrosscoderUserError(
                    f"taxonomy {self.name!r}: {cat.name!r} -> {parent.name!r} -> {parent.parent!r} is three levels; "
                    "taxonomies have two (a parent and its children)"
                )
        if self.other not in by_name:
            raise CrosscoderUserError(
                f"taxonomy {self.name!r} has no fallback category {self.other!r}; add a category for latents that "
                "fit nothing else, or set other= to an existing one"
            )

    # ---- lookups -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def get(self, name: str) -> Category:
        for cat in self.categories:
            if cat.name == name:
                return cat
        raise CrosscoderUserError(
            f"taxonomy {self.name!r} has no category {name!r}{_suggest(name, self.names)}; "
            f"categories: {', '.join(self.names)}"
        )

    def resolve(self, answer: str) -> str | None:
        """The category an answer means (by name or title, ignoring case and punctuation),
        or None when it names no category."""
        key = normalise_name(answer)
        for cat in self.categories:
            if key in (normalise_name(cat.name), normalise_name(cat.display)):
                return cat.name
        return None

    def children(self, name: str) -> list[str]:
        return [c.name for c in self.categories if c.parent == name]

    def members(self, name: str) -> set[str]:
        """A category and its children: a label in any of them counts for the category."""
        return {name, *self.children(name)}

    def fingerprint(self) -> str:
        """A short hash of the content; labels and caches record it so a changed taxonomy
        under the same name is noticed."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "other": self.other,
            "categories": [c.to_dict() for c in self.categories],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Taxonomy:
        if not isinstance(raw, dict) or "name" not in raw or "categories" not in raw:
            raise CrosscoderUserError("a taxonomy must be a mapping with 'name' and a list of 'categories'")
        if not isinstance(raw["categories"], list) or not raw["categories"]:
            raise CrosscoderUserError(f"taxonomy {raw['name']!r}: 'categories' must be a non-empty list")
        return cls(
            name=str(raw["name"]),
            categories=tuple(Category.from_dict(c) for c in raw["categories"]),
            description=str(raw.get("description") or ""),
            other=str(raw.get("other") or "other"),
        )


# ---- the registry ------------------------------------------------------------------------
_TAXONOMIES: dict[str, Taxonomy] = {}
_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from sae_lens_crosscoder.labelling import capabilities  # noqa: F401  (registers on import)


def register_taxonomy(
    name: str | Taxonomy,
    categories: Sequence[Category | dict[str, Any]] | None = None,
    *,
    description: str = "",
    other: str = "other",
    overwrite: bool = False,
) -> Taxonomy:
    """Register a taxonomy, given whole or as a name and its categories (``Category``
    objects or dicts). Re-registering an identical taxonomy is a no-op; a different one
    under a taken name needs ``overwrite=True``."""
    if isinstance(name, Taxonomy):
        if categories is not None:
            raise CrosscoderUserError("register_taxonomy: pass a Taxonomy or a name with categories, not both")
        taxonomy = name
    else:
        if not categories:
            raise CrosscoderUserError(f"register_taxonomy({name!r}): give its categories")
        cats = tuple(c if isinstance(c, Category) else Category.from_dict(c) for c in categories)
        taxonomy = Taxonomy(name=name, categories=cats, description=description, other=other)
    _ensure_builtins()  # so a user's taxonomy never silently shadows a built-in of the same name
    existing = _TAXONOMIES.get(taxonomy.name)
    if existing is not None and existing != taxonomy and not overwrite:
        raise CrosscoderUserError(
            f"a different taxonomy named {taxonomy.name!r} is already registered; "
            "choose another name or pass overwrite=True"
        )
    _TAXONOMIES[taxonomy.name] = taxonomy
    return taxonomy


def get_taxonomy(name: str) -> Taxonomy:
    _ensure_builtins()
    if name in _TAXONOMIES:
        return _TAXONOMIES[name]
    raise CrosscoderUserError(
        f"unknown taxonomy {name!r}{_suggest(name, _TAXONOMIES)}; registered: {', '.join(sorted(_TAXONOMIES))} "
        "(or pass a YAML/JSON taxonomy file)"
    )


def list_taxonomies() -> list[str]:
    _ensure_builtins()
    return sorted(_TAXONOMIES)


def load_taxonomy(name_or_path: str | Taxonomy) -> Taxonomy:
    """A registered taxonomy by name, or one read from a YAML/JSON file (registered too,
    so later lookups by its name work)."""
    if isinstance(name_or_path, Taxonomy):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise CrosscoderUserError(f"taxonomy file {path} does not exist; pass a registered name or a file path")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            raise CrosscoderUserError(f"taxonomy file {path} is not valid YAML/JSON; fix the syntax") from None
        return register_taxonomy(Taxonomy.from_dict(raw), overwrite=True)
    return get_taxonomy(str(name_or_path))


def _suggest(name: str, options: Iterable[str]) -> str:
    return suggest(name, options, cutoff=0.5)
