"""The run config: one flat dataclass, read from YAML/JSON, round-tripping through dicts.

A run needs little more than ``architecture``, ``d_sae`` (or ``expansion_factor``), ``k``
(TopK variants), ``model_names`` and a data source; everything else has a default that
follows the best public crosscoder recipes (learning rate scaled to the dictionary size,
warm-up, linear decay over the last 20 %, AuxK on dead latents). Keys nested the SAELens way
(``sae: {...}``, ``logger: {...}``) are flattened on load.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.strict_dicts import suggest

CROSSCODER_ARCHITECTURES = ("crosscoder", "topk_crosscoder", "batchtopk_crosscoder", "jumprelu_crosscoder")
# architectures whose latents are ranked and cut at k
K_ARCHITECTURES = ("topk_crosscoder", "batchtopk_crosscoder", "topk", "batchtopk", "matryoshka_batchtopk")


@dataclass
class CrosscoderRunnerConfig:
    # ---- what to train -----------------------------------------------------------------
    architecture: str = "batchtopk_crosscoder"
    # "crosscoder": one dictionary over all models; "difference": a SAELens SAE on the
    # difference x[difference_pair[1]] - x[difference_pair[0]] ([1, 0] for the reverse
    # direction); "single": a SAELens SAE on x[model_index] alone, the per-model baseline
    # (architecture is then a SAELens one: standard, topk, batchtopk, jumprelu, matryoshka_batchtopk)
    mode: Literal["crosscoder", "difference", "single"] = "crosscoder"
    difference_pair: list[int] = field(default_factory=lambda: [0, 1])
    model_index: int = 0
    d_sae: int | None = None
    expansion_factor: float | None = None  # d_sae = expansion_factor * d_model
    k: float | None = None  # TopK variants; defaults to 100 (capped at d_sae // 4)
    l1_coefficient: float | None = None  # `crosscoder` (L1) and SAELens `standard` only
    l1_warm_up_steps: int | None = None  # defaults to 5 % of the steps
    l0_coefficient: float | None = None  # `jumprelu_crosscoder` and SAELens `jumprelu` only
    sparsity_loss_mode: Literal["tanh", "l0"] | None = None  # `jumprelu_crosscoder` only
    n_shared_latents: int = 0
    shared_sparsity_coefficient: float = 0.15
    aux_loss_coefficient: float | None = None  # AuxK weight, default 1/32
    k_anneal_start: float | None = None
    k_anneal_steps: int | None = None
    decoder_init_norm: float | None = None
    per_model_normalization: bool = True
    b_dec_init: Literal["mean", "zeros"] = "mean"
    sae_kwargs: dict[str, Any] = field(default_factory=dict)  # any other training-config field

    # ---- data --------------------------------------------------------------------------
    model_names: list[str] = field(default_factory=list)
    cached_activations_path: str | None = None
    cache_shuffle_buffer_tokens: int = 262_144
    cache_chunk_tokens: int = 8_192
    # live paired store (models run on identical tokens); see paired_store.py. Live runs
    # shuffle in windows of cache_shuffle_buffer_tokens (whole cache_chunk_tokens chunks),
    # exactly as a cache read in stream order, so live and cached runs see the same batches.
    hook_name: str | None = None
    hook_names: list[str] | None = None  # one per model, instead of hook_name
    dataset_path: str | None = None  # HF id, local file (.txt/.jsonl/.parquet/.csv) or directory
    datasets: list[dict[str, Any]] | None = None  # mix: [{path, weight, split, chat, text_column, ...}]
    is_dataset_tokenized: bool | None = None  # None: detected from the columns
    dataset_split: str = "train"
    streaming: bool = True
    context_size: int = 128
    prepend_bos: bool = True
    sequence_separator_token: int | str | None = "bos"  # between packed documents (SAELens's default)
    exclude_special_tokens: bool | list[int] = True  # BOS and padding are always excluded
    exclude_template_tokens: bool = False  # chat-template tokens (role headers, turn markers)
    model_dtype: str = "float32"
    devices: list[str] | None = None  # one per model (or one for all); default `device`
    model_from_pretrained_kwargs: dict[str, Any] | None = None
    model_architectures: list[str | None] | None = None  # official TL name to load each model into
    store_batch_size_prompts: int = 16  # context windows per model forward
    cache_shuffle_chunks: bool | None = None  # None: False for caches written in stream order by `cache`
    cache_token_budget: int | None = None  # tokens `cache` writes (after exclusions)
    cache_shard_tokens: int = 65_536
    cache_dtype: str = "float32"

    # ---- optimisation ------------------------------------------------------------------
    lr: float | None = None  # default 2e-4 / sqrt(d_sae / 2**14)
    lr_end: float | None = None
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int | None = None  # default min(1000, 5 % of steps)
    lr_decay_steps: int | None = None  # default 20 % of steps, linear to 0
    n_restart_cycles: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    train_batch_size_tokens: int = 4096
    training_tokens: int = 2_000_000
    dead_feature_window: int | None = None  # steps; default min(10M tokens, 10 % of training)
    feature_sampling_window: int = 2000
    autocast: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 42
    n_batches_for_norm_estimate: int = 32

    # ---- outputs and checkpoints -------------------------------------------------------
    output_path: str = "crosscoder_out"
    checkpoint_path: str | None = None  # default <output_path>/checkpoints
    n_checkpoints: int = 0
    checkpoint_every_tokens: int | None = None
    keep_checkpoints: int = 2

    # ---- evaluation at checkpoints and at the end ----------------------------------------
    # per-model FVE/MSE/L0/dead on eval_tokens tokens (0 = off), read from
    # eval_activations_path (a held-out paired cache), else the start of the training data;
    # with live models also CE/KL of each model with its reconstruction spliced in
    eval_tokens: int = 0
    eval_ce_tokens: int = 0
    eval_activations_path: str | None = None

    # ---- logging -----------------------------------------------------------------------
    log_to_wandb: bool = False
    wandb_project: str = "sae_lens_crosscoder"
    wandb_entity: str | None = None
    run_name: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_log_frequency: int = 10
    eval_every_n_wandb_logs: int = 100

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mode not in ("crosscoder", "difference", "single"):
            raise CrosscoderUserError(f"mode={self.mode!r}: use 'crosscoder', 'difference' or 'single'")
        if self.mode == "crosscoder" and self.architecture not in CROSSCODER_ARCHITECTURES:
            raise CrosscoderUserError(
                f"unknown architecture {self.architecture!r}: choose one of {', '.join(CROSSCODER_ARCHITECTURES)}"
                + _suggest(self.architecture, CROSSCODER_ARCHITECTURES)
            )
        if self.d_sae is not None and self.expansion_factor is not None:
            raise CrosscoderUserError("set d_sae or expansion_factor, not both")
        if self.d_sae is not None and self.d_sae <= 0:
            raise CrosscoderUserError(f"d_sae={self.d_sae} must be a positive integer")
        if self.k is not None and self.architecture not in K_ARCHITECTURES:
            raise CrosscoderUserError(
                f"k applies to TopK architectures ({', '.join(K_ARCHITECTURES)}), not {self.architecture!r}; remove it"
            )
        # the same keys set the SAELens SAE's penalty in difference and single modes
        for key, archs in (
            ("l1_coefficient", ("crosscoder", "standard")),
            ("l1_warm_up_steps", ("crosscoder", "standard")),
            ("l0_coefficient", ("jumprelu_crosscoder", "jumprelu")),
            ("sparsity_loss_mode", ("jumprelu_crosscoder",)),
        ):
            if getattr(self, key) is not None and self.architecture not in archs:
                raise CrosscoderUserError(
                    f"{key} applies to architecture {' or '.join(map(repr, archs))} only, not {self.architecture!r}"
                )
        if self.train_batch_size_tokens <= 0 or self.training_tokens < self.train_batch_size_tokens:
            raise CrosscoderUserError(
                f"training_tokens={self.training_tokens} must be at least one batch "
                f"(train_batch_size_tokens={self.train_batch_size_tokens})"
            )
        if self.model_names and len(set(self.model_names)) != len(self.model_names):
            raise CrosscoderUserError(f"model_names has duplicates: {self.model_names}; give each model a distinct name")
        if self.mode == "difference" and len(self.difference_pair) != 2:
            raise CrosscoderUserError(f"difference_pair={self.difference_pair} must be [base_index, finetuned_index]")
        if self.mode == "single" and self.model_index < 0:
            raise CrosscoderUserError(f"model_index={self.model_index} must be a model's index (0, 1, ...)")

    # ---- derived values ----------------------------------------------------------------
    @property
    def total_training_steps(self) -> int:
        return self.training_tokens // self.train_batch_size_tokens

    def resolved_d_sae(self, d_model: int) -> int:
        if self.d_sae is not None:
            return self.d_sae
        if self.expansion_factor is not None:
            return max(1, int(round(self.expansion_factor * d_model)))
        raise CrosscoderUserError("set d_sae (dictionary size) or expansion_factor in the config")

    def resolved_lr(self, d_sae: int) -> float:
        """Scaled with the dictionary size as in Gao et al. 2024 and dictionary_learning."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def resolved_k(self, d_sae: int) -> float:
        return self.k if self.k is not None else float(min(100, max(1, d_sae // 4)))

    def resolved_warm_up_steps(self) -> int:
        if self.lr_warm_up_steps is not None:
            return self.lr_warm_up_steps
        return min(1000, self.total_training_steps // 20)

    def resolved_decay_steps(self) -> int:
        if self.lr_decay_steps is not None:
            return self.lr_decay_steps
        return self.total_training_steps // 5

    def resolved_dead_feature_window(self) -> int:
        if self.dead_feature_window is not None:
            return self.dead_feature_window
        window_tokens = min(10_000_000, self.training_tokens // 10)
        return max(1, window_tokens // self.train_batch_size_tokens)

    def resolved_checkpoint_path(self) -> Path:
        return Path(self.checkpoint_path) if self.checkpoint_path else Path(self.output_path) / "checkpoints"

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CrosscoderRunnerConfig:
        if not isinstance(raw, dict):
            raise CrosscoderUserError(f"a config must be a mapping of keys to values, got {type(raw).__name__}")
        flat = _flatten_nested(raw)
        known = {f.name: f for f in fields(cls)}
        unknown = [key for key in flat if key not in known]
        if unknown:
            key = unknown[0]
            raise CrosscoderUserError(
                f"unknown config key {key!r}{_suggest(key, list(known))}; "
                "see CrosscoderRunnerConfig in sae_lens_crosscoder/config.py for the valid keys"
            )
        hints = typing.get_type_hints(cls)
        values = {key: _coerce(key, value, hints[key]) for key, value in flat.items()}
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> CrosscoderRunnerConfig:
        return cls.from_dict(apply_overrides(load_config_dict(path), overrides or []))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def load_config_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CrosscoderUserError(f"config file {path} does not exist; pass the path of a YAML or JSON config")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CrosscoderUserError(f"config {path} is not valid YAML/JSON{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise CrosscoderUserError(f"config {path} must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML) on top of a config dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise CrosscoderUserError(f"--set {item!r} is not key=value; write e.g. --set lr=1e-4")
        key, value = item.split("=", 1)
        data[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return data


def _flatten_nested(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept SAELens-style nesting: `sae:` holds architecture fields, `logger:` W&B fields."""
    flat = {k: v for k, v in raw.items() if k not in ("sae", "logger")}
    for section in ("sae", "logger"):
        nested = raw.get(section)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise CrosscoderUserError(f"config key {section!r} must be a mapping")
        for key, value in nested.items():
            if key in flat:
                raise CrosscoderUserError(f"config key {key!r} is set both at top level and under {section!r}")
            flat[key] = value
    return flat


def _suggest(key: str, options: Any) -> str:
    return suggest(key, options)


def add_overrides_argument(parser: Any, help: str = "override a config key (repeatable); values are parsed as YAML") -> None:
    """The `--set key=value` option of every command that reads a run config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a value against a field's annotation, converting the obvious cases (YAML
    reads 1e-4 as a string, ints where floats are expected)."""
    if value is None:
        if _allows_none(hint):
            return None
        raise CrosscoderUserError(f"config key {key!r} cannot be empty")
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except CrosscoderUserError as exc:
                errors.append(str(exc))
        raise CrosscoderUserError(errors[-1])
    if origin is Literal:
        options = typing.get_args(hint)
        if value not in options:
            raise CrosscoderUserError(
                f"config key {key!r} is {value!r}; expected one of {', '.join(map(repr, options))}"
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise CrosscoderUserError(f"config key {key!r} expects a list, got {value!r}")
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return [_coerce(key, v, inner) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise CrosscoderUserError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise CrosscoderUserError(f"config key {key!r} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise CrosscoderUserError(f"config key {key!r} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = _number(key, value, "an integer")
        if number != int(number):
            raise CrosscoderUserError(f"config key {key!r} expects an integer, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise CrosscoderUserError(f"config key {key!r} expects a number, got {value!r}")
        return _number(key, value, "a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise CrosscoderUserError(f"config key {key!r} expects a string, got {value!r}")
    return value


def _number(key: str, value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CrosscoderUserError(f"config key {key!r} expects {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise CrosscoderUserError(f"config key {key!r} must be finite, got {value!r}")
    return number


def _allows_none(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)
