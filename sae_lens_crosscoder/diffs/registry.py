"""The registry of diffs: a named, rerunnable model-diffing study.

A ``ModelDiff`` holds the models, one run config per crosscoder (a preset plus
overrides), how each side's latent set is selected, the taxonomy, labeller defaults,
share definition, and the study's published results with their provenance. It
round-trips through a plain dict (``to_dict`` / ``from_dict``) and resolves its run
configs without network access.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.selection import SelectionRule


@dataclass
class CrosscoderSpec:
    """One crosscoder of a diff: a preset (or an inline config) plus overrides. The
    diff's output root decides where it is written."""

    name: str
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # keys applied over the preset
    overrides: list[str] = field(default_factory=list)  # "key=value", applied last
    cache: bool = False  # write a paired activation cache first and train from it
    analysis: dict[str, Any] = field(default_factory=dict)  # AnalysisConfig fields

    def run_config(self, out_dir: str | Path, extra_overrides: list[str] | None = None) -> Any:
        """The resolved ``CrosscoderRunnerConfig``, writing under ``out_dir``."""
        from sae_lens_crosscoder.config import CrosscoderRunnerConfig, apply_overrides, load_config_dict
        from sae_lens_crosscoder.presets import preset_path

        data = load_config_dict(preset_path(self.preset)) if self.preset else {}
        data.update(self.config)
        data = apply_overrides(data, [*self.overrides, *(extra_overrides or [])])
        out = Path(out_dir)
        data["output_path"] = str(out / "crosscoder")
        if self.cache:
            data["cached_activations_path"] = str(out / "cache")
        return CrosscoderRunnerConfig.from_dict(data)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CrosscoderSpec:
        return _build(cls, raw, "crosscoder")


@dataclass
class LatentSetSpec:
    """One side of the comparison: the latents exclusive to ``model`` in ``crosscoder``."""

    name: str
    crosscoder: str
    model: str
    selection: SelectionRule = field(default_factory=SelectionRule)
    published_count: int | None = None
    published_source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.selection, dict):
            self.selection = SelectionRule.from_dict(self.selection)

    def resolved_selection(self) -> SelectionRule:
        return SelectionRule.from_dict({**self.selection.to_dict(), "model": self.model})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatentSetSpec:
        return _build(cls, raw, "latent set")


@dataclass
class ReferenceResult:
    """A published category shift (set B relative to set A), mapped to a category."""

    category: str  # a category of the diff's taxonomy
    published_name: str  # the study's wording
    relative_change: float | None  # percent; None when only the direction is published
    direction: Literal["up", "down"]
    provenance: str  # "abstract" | "secondary summaries" | ...
    note: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down"):
            raise CrosscoderUserError(f"reference {self.published_name!r}: direction must be 'up' or 'down'")
        if self.relative_change is not None and (self.relative_change > 0) != (self.direction == "up"):
            raise CrosscoderUserError(
                f"reference {self.published_name!r}: {self.relative_change:+} contradicts direction {self.direction!r}"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReferenceResult:
        return _build(cls, raw, "reference result")


@dataclass
class LabellerSpec:
    kind: str = "rules"  # rules | llm | manual
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LabellerSpec:
        return _build(cls, raw, "labeller")


@dataclass
class ModelDiff:
    name: str
    description: str
    models: dict[str, str]  # role -> model id
    crosscoders: list[CrosscoderSpec]
    set_a: LatentSetSpec  # the reference side: relative change is (p_B - p_A) / p_A
    set_b: LatentSetSpec
    taxonomy: str = "capabilities-v1"
    labeller: LabellerSpec = field(default_factory=LabellerSpec)
    share: str = "per_latent"
    weight: str = "count"
    n_bootstrap: int = 2000
    seed: int = 0
    references: list[ReferenceResult] = field(default_factory=list)
    citation: str = ""
    notes: list[str] = field(default_factory=list)
    output_root: str | None = None  # default runs/<name>

    def __post_init__(self) -> None:
        self.crosscoders = [c if isinstance(c, CrosscoderSpec) else CrosscoderSpec.from_dict(c) for c in self.crosscoders]
        for key in ("set_a", "set_b"):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, LatentSetSpec.from_dict(value))
        if isinstance(self.labeller, dict):
            self.labeller = LabellerSpec.from_dict(self.labeller)
        self.references = [r if isinstance(r, ReferenceResult) else ReferenceResult.from_dict(r) for r in self.references]
        names = [c.name for c in self.crosscoders]
        if not names or len(set(names)) != len(names):
            raise CrosscoderUserError(f"diff {self.name!r}: crosscoder names {names} must be present and distinct")
        for side in (self.set_a, self.set_b):
            if side.crosscoder not in names:
                raise CrosscoderUserError(
                    f"diff {self.name!r}: latent set {side.name!r} names crosscoder {side.crosscoder!r}; "
                    f"the diff has {', '.join(names)}"
                )
        if self.set_a.name == self.set_b.name:
            raise CrosscoderUserError(f"diff {self.name!r}: the two latent sets need distinct names")

    # ---- resolution ------------------------------------------------------------------
    def crosscoder(self, name: str) -> CrosscoderSpec:
        return next(c for c in self.crosscoders if c.name == name)

    def root(self, override: str | Path | None = None) -> Path:
        return Path(override or self.output_root or Path("runs") / self.name)

    def run_configs(self, root: str | Path | None = None, overrides: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Each crosscoder's resolved run config, under ``root/<crosscoder name>``."""
        base = self.root(root)
        return {c.name: c.run_config(base / c.name, (overrides or {}).get(c.name)) for c in self.crosscoders}

    def validate(self, root: str | Path | None = None) -> None:
        """Everything that can be checked offline: the taxonomy and the reference
        categories exist, the presets resolve, each set's model is in its crosscoder."""
        from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

        taxonomy = get_taxonomy(self.taxonomy)
        for ref in self.references:
            taxonomy.get(ref.category)
        configs = self.run_configs(root)
        for side in (self.set_a, self.set_b):
            models = configs[side.crosscoder].model_names
            if side.model not in models:
                raise CrosscoderUserError(
                    f"diff {self.name!r}: set {side.name!r} selects latents of {side.model!r}, which crosscoder "
                    f"{side.crosscoder!r} does not train on ({', '.join(models)})"
                )

    def reference_values(self) -> list[Any]:
        from sae_lens_crosscoder.labelling.shift import ReferenceValue

        return [ReferenceValue(r.category, r.relative_change, r.direction, r.provenance, r.published_name)
                for r in self.references]

    # ---- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelDiff:
        return _build(cls, raw, "diff")


def _build(cls: Any, raw: dict[str, Any], what: str) -> Any:
    if not isinstance(raw, dict):
        raise CrosscoderUserError(f"a {what} must be a mapping, got {type(raw).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CrosscoderUserError(f"{what}: unknown key {unknown[0]!r}{hint}; valid keys: {', '.join(known)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise CrosscoderUserError(f"{what}: {exc}") from None


# ---- the registry ------------------------------------------------------------------------
_DIFFS: dict[str, ModelDiff] = {}
_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from sae_lens_crosscoder.diffs import builtin  # noqa: F401  (registers on import)


def register_diff(name: str | ModelDiff, /, *, overwrite: bool = False, **spec: Any) -> ModelDiff:
    """Register a diff, given whole or as a name plus ``ModelDiff`` fields (objects or
    dicts). A different diff under a taken name needs ``overwrite=True``."""
    if isinstance(name, ModelDiff):
        if spec:
            raise CrosscoderUserError("register_diff: pass a ModelDiff or a name with its fields, not both")
        diff = name
    else:
        diff = ModelDiff.from_dict({"name": name, **spec})
    _ensure_builtins()  # so a user's diff never silently shadows a built-in of the same name
    existing = _DIFFS.get(diff.name)
    if existing is not None and existing != diff and not overwrite:
        raise CrosscoderUserError(
            f"a different diff named {diff.name!r} is already registered; choose another name or pass overwrite=True"
        )
    _DIFFS[diff.name] = diff
    return diff


def get_diff(name: str) -> ModelDiff:
    _ensure_builtins()
    if name in _DIFFS:
        return _DIFFS[name]
    close = difflib.get_close_matches(name, list(_DIFFS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise CrosscoderUserError(
        f"unknown diff {name!r}{hint}; registered: {', '.join(sorted(_DIFFS))} (see `sae-lens-crosscoder diff --list`)"
    )


def list_diffs() -> list[str]:
    _ensure_builtins()
    return sorted(_DIFFS)
