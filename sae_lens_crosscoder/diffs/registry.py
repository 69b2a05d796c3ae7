"""The registry of diffs: a named, rerunnable model-diffing study.

A ``ModelDiff`` holds the models, one run config per crosscoder (a preset plus
overrides), optional difference SAEs (SAELens SAEs on x[finetuned] - x[base], each
trained on a crosscoder's data and joined to it), how each side's latent set is selected
(exclusive crosscoder latents, or difference latents), the taxonomy, labeller defaults,
share definition, and the study's published results with their provenance. It
round-trips through a plain dict (``to_dict`` / ``from_dict``) and resolves its run
configs without network access.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.strict_dicts import dataclass_from_dict, suggest
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
        from sae_lens_crosscoder.config import CrosscoderRunnerConfig

        return CrosscoderRunnerConfig.from_dict(self.config_data(out_dir, extra_overrides))

    def config_data(self, out_dir: str | Path, extra_overrides: list[str] | None = None) -> dict[str, Any]:
        """The run config as a plain dict (preset, config, overrides, output paths)."""
        data = _layered(self.preset, self.config, [*self.overrides, *(extra_overrides or [])])
        out = Path(out_dir)
        data["output_path"] = str(out / "crosscoder")
        if self.cache:
            data["cached_activations_path"] = str(out / "cache")
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CrosscoderSpec:
        return dataclass_from_dict(cls, raw, "crosscoder")


# keys of a crosscoder's run config that describe the crosscoder rather than the data, left
# out when a difference SAE inherits that config
CROSSCODER_ONLY_KEYS = (
    "architecture", "l1_coefficient", "l1_warm_up_steps", "l0_coefficient", "sparsity_loss_mode", "n_shared_latents",
    "shared_sparsity_coefficient", "k_anneal_start", "k_anneal_steps", "decoder_init_norm", "sae_kwargs",
    "checkpoint_path", "run_name", "eval_tokens", "eval_ce_tokens", "eval_activations_path", "mode",
)


@dataclass
class DifferenceSpec:
    """A difference SAE of a diff: a SAELens SAE on x[finetuned] - x[base] (``mode:
    difference``). With ``crosscoder``, it trains on that crosscoder's data (its run config
    without the crosscoder's own keys, and its cache when it caches) and its analysis is
    joined to that crosscoder; ``config`` and ``overrides`` apply on top (architecture
    defaults to ``batchtopk``; d_sae, k and the training budget are the crosscoder's unless
    set). Without one, ``preset``/``config`` give the whole run config."""

    name: str
    crosscoder: str | None = None
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    cache: bool = False  # its own paired cache (the crosscoder's is used when it has one)
    analysis: dict[str, Any] = field(default_factory=dict)  # AnalysisConfig fields
    join: dict[str, Any] = field(default_factory=dict)  # JoinThresholds fields

    def __post_init__(self) -> None:
        if self.crosscoder is None and self.preset is None and not self.config:
            raise CrosscoderUserError(
                f"difference SAE {self.name!r}: name the crosscoder whose data it trains on, or give a preset/config"
            )
        if self.join:
            from sae_lens_crosscoder.difference.join import JoinThresholds

            JoinThresholds.from_dict(dict(self.join))

    def run_config(self, out_dir: str | Path, crosscoder: CrosscoderSpec | None = None,
                   crosscoder_dir: str | Path | None = None, extra_overrides: list[str] | None = None) -> Any:
        """The resolved ``CrosscoderRunnerConfig`` (mode difference), writing under ``out_dir``;
        ``crosscoder`` and ``crosscoder_dir`` are the spec and directory it inherits data from."""
        from sae_lens_crosscoder.config import CrosscoderRunnerConfig

        data: dict[str, Any] = {}
        if crosscoder is not None:
            inherited = crosscoder.config_data(crosscoder_dir or out_dir)
            data = {k: v for k, v in inherited.items() if k not in CROSSCODER_ONLY_KEYS}
            data["architecture"] = "batchtopk"
        data.update(_layered(self.preset, self.config, []))
        data.setdefault("mode", "difference")
        data = _apply(data, [*self.overrides, *(extra_overrides or [])])
        if data["mode"] != "difference":
            raise CrosscoderUserError(f"difference SAE {self.name!r}: mode must be 'difference', not {data['mode']!r}")
        out = Path(out_dir)
        data["output_path"] = str(out / "sae")
        if self.cache:
            data["cached_activations_path"] = str(out / "cache")
        return CrosscoderRunnerConfig.from_dict(data)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DifferenceSpec:
        return dataclass_from_dict(cls, raw, "difference SAE")


def _layered(preset: str | None, config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from sae_lens_crosscoder.config import load_config_dict
    from sae_lens_crosscoder.presets import preset_path

    data = load_config_dict(preset_path(preset)) if preset else {}
    data.update(config)
    return _apply(data, overrides)


def _apply(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    from sae_lens_crosscoder.config import apply_overrides

    return apply_overrides(data, overrides)


SOURCES = ("crosscoder", "difference")


@dataclass
class LatentSetSpec:
    """One side of the comparison: the latents exclusive to ``model`` in ``crosscoder``, or,
    with ``source: difference``, latents of the difference SAE named by ``crosscoder`` whose
    fine-tuned model is ``model`` (selected by rule ``frequency`` — all that fired, or the
    ``max_latents`` most frequent — or ``all``; ``frequency`` is the default there)."""

    name: str
    crosscoder: str
    model: str
    selection: SelectionRule = None  # type: ignore[assignment]  # None: the source's default rule
    published_count: int | None = None
    published_source: str = ""
    source: Literal["crosscoder", "difference"] = "crosscoder"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CrosscoderUserError(f"latent set {self.name!r}: source {self.source!r} must be one of {SOURCES}")
        if self.selection is None:
            self.selection = SelectionRule(rule="frequency") if self.source == "difference" else SelectionRule()
        elif isinstance(self.selection, dict):
            self.selection = SelectionRule.from_dict(self.selection)
        if self.source == "difference":
            from sae_lens_crosscoder.labelling.selection import DIFFERENCE_RULES

            if self.selection.rule not in DIFFERENCE_RULES:
                raise CrosscoderUserError(
                    f"latent set {self.name!r}: difference latents are selected by rule "
                    f"{' or '.join(DIFFERENCE_RULES)}, not {self.selection.rule!r}"
                )

    def resolved_selection(self) -> SelectionRule:
        return SelectionRule.from_dict({**self.selection.to_dict(), "model": self.model})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatentSetSpec:
        return dataclass_from_dict(cls, raw, "latent set")


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
        return dataclass_from_dict(cls, raw, "reference result")


@dataclass
class LabellerSpec:
    kind: str = "rules"  # rules | llm | manual
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LabellerSpec:
        return dataclass_from_dict(cls, raw, "labeller")


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
    difference_saes: list[DifferenceSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.crosscoders = [c if isinstance(c, CrosscoderSpec) else CrosscoderSpec.from_dict(c) for c in self.crosscoders]
        self.difference_saes = [d if isinstance(d, DifferenceSpec) else DifferenceSpec.from_dict(d)
                                for d in self.difference_saes]
        for key in ("set_a", "set_b"):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, LatentSetSpec.from_dict(value))
        if isinstance(self.labeller, dict):
            self.labeller = LabellerSpec.from_dict(self.labeller)
        self.references = [r if isinstance(r, ReferenceResult) else ReferenceResult.from_dict(r) for r in self.references]
        names = [c.name for c in self.crosscoders]
        differences = [d.name for d in self.difference_saes]
        if not names or len(set(names + differences)) != len(names + differences):
            raise CrosscoderUserError(
                f"diff {self.name!r}: crosscoder and difference SAE names {names + differences} must be present and "
                "distinct (each gets its own directory)"
            )
        for spec in self.difference_saes:
            if spec.crosscoder is not None and spec.crosscoder not in names:
                raise CrosscoderUserError(
                    f"diff {self.name!r}: difference SAE {spec.name!r} names crosscoder {spec.crosscoder!r}; "
                    f"the diff has {', '.join(names)}"
                )
        for side in (self.set_a, self.set_b):
            options = differences if side.source == "difference" else names
            if side.crosscoder not in options:
                what = "difference SAE" if side.source == "difference" else "crosscoder"
                raise CrosscoderUserError(
                    f"diff {self.name!r}: latent set {side.name!r} names {what} {side.crosscoder!r}; "
                    f"the diff has {', '.join(options) or 'none'}"
                )
        if self.set_a.name == self.set_b.name:
            raise CrosscoderUserError(f"diff {self.name!r}: the two latent sets need distinct names")

    # ---- resolution ------------------------------------------------------------------
    def crosscoder(self, name: str) -> CrosscoderSpec:
        return next(c for c in self.crosscoders if c.name == name)

    @property
    def spec_names(self) -> list[str]:
        """Crosscoders and difference SAEs: everything with a run config and a directory."""
        return [c.name for c in self.crosscoders] + [d.name for d in self.difference_saes]

    def root(self, override: str | Path | None = None) -> Path:
        return Path(override or self.output_root or Path("runs") / self.name)

    def run_configs(self, root: str | Path | None = None, overrides: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Each crosscoder's and difference SAE's resolved run config, under ``root/<name>``."""
        base, overrides = self.root(root), overrides or {}
        configs = {c.name: c.run_config(base / c.name, overrides.get(c.name)) for c in self.crosscoders}
        for d in self.difference_saes:
            parent = self.crosscoder(d.crosscoder) if d.crosscoder else None
            configs[d.name] = d.run_config(base / d.name, parent, base / d.crosscoder if d.crosscoder else None,
                                           overrides.get(d.name))
        return configs

    def validate(self, root: str | Path | None = None) -> None:
        """Everything that can be checked offline: the taxonomy and the reference
        categories exist, the presets resolve, each set's model is in its crosscoder."""
        from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

        taxonomy = get_taxonomy(self.taxonomy)
        for ref in self.references:
            taxonomy.get(ref.category)
        configs = self.run_configs(root)
        for side in (self.set_a, self.set_b):
            cfg = configs[side.crosscoder]
            models = cfg.model_names
            if side.model not in models:
                raise CrosscoderUserError(
                    f"diff {self.name!r}: set {side.name!r} selects latents of {side.model!r}, which "
                    f"{side.source} {side.crosscoder!r} does not train on ({', '.join(models)})"
                )
            if side.source == "difference" and len(models) > max(cfg.difference_pair) \
                    and side.model != models[cfg.difference_pair[1]]:
                base, ft = (models[i] for i in cfg.difference_pair)
                raise CrosscoderUserError(
                    f"diff {self.name!r}: set {side.name!r} names model {side.model!r}, but difference SAE "
                    f"{side.crosscoder!r} encodes {ft} - {base}; name its fine-tuned model {ft!r}"
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
        return dataclass_from_dict(cls, raw, "diff")


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
    hint = suggest(name, _DIFFS, cutoff=0.5)
    raise CrosscoderUserError(
        f"unknown diff {name!r}{hint}; registered: {', '.join(sorted(_DIFFS))} (see `sae-lens-crosscoder diff --list`)"
    )


def list_diffs() -> list[str]:
    _ensure_builtins()
    return sorted(_DIFFS)
