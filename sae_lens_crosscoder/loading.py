"""Loading the models of a diff into TransformerLens, and checking they can be paired.

Three routes, chosen per model:

- an official TransformerLens name (``google/gemma-2-9b``): ``from_pretrained_no_processing``;
- a fine-tune given by HF id or local path plus the official architecture it shares
  (``model_architectures``), the SimPO case: the HF weights are loaded with transformers
  and handed to ``from_pretrained_no_processing(official, hf_model=...)`` after checking
  that the dimensions match TransformerLens's (name-based) config;
- a local HF directory of an architecture TransformerLens converts (Gemma-2, GPT-2,
  Llama, ...), which is not an official name: a ``HookedTransformerConfig`` is built from
  the local HF config and the weights go through TransformerLens's converters.

Every route loads with the same processing flags (none), so the models' activations are
comparable. Tokenizers from local paths are read from disk only.

Before anything heavy runs, `check_tokenizers` (same vocabulary and special tokens) and
`check_hooks` (the hook exists, same width in every model) raise one-line
`CrosscoderUserError`s naming the models.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading

from sae_lens_crosscoder.errors import CrosscoderUserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sae_lens_crosscoder.config import CrosscoderRunnerConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# HF config attributes that must agree with TransformerLens's config for an official
# architecture before a fine-tune's weights are loaded into it
_DIM_CHECKS = (
    ("hidden_size", "d_model"),
    ("num_hidden_layers", "n_layers"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_mlp"),
    ("vocab_size", "d_vocab"),
)


# ---- names and dtypes ----------------------------------------------------------------------
def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def is_official(name: str) -> bool:
    try:
        tl_loading.get_official_model_name(name)
    except ValueError:
        return False
    return True


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CrosscoderUserError(f"model_dtype={name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_hook_names(cfg: CrosscoderRunnerConfig) -> list[str]:
    """One hook per model: `hook_names` if given, else `hook_name` for all."""
    n = len(cfg.model_names)
    if cfg.hook_names:
        if len(cfg.hook_names) != n:
            raise CrosscoderUserError(
                f"hook_names lists {len(cfg.hook_names)} hooks for {n} models; give one hook per model"
            )
        return list(cfg.hook_names)
    if not cfg.hook_name:
        raise CrosscoderUserError("set hook_name (e.g. blocks.6.hook_resid_post) or hook_names, one per model")
    return [cfg.hook_name] * n


def model_devices(cfg: CrosscoderRunnerConfig) -> list[str]:
    n = len(cfg.model_names)
    if not cfg.devices:
        return [cfg.device] * n
    if len(cfg.devices) == 1:
        return list(cfg.devices) * n
    if len(cfg.devices) != n:
        raise CrosscoderUserError(f"devices lists {len(cfg.devices)} devices for {n} models; give one per model (or one)")
    return list(cfg.devices)


def model_architectures(cfg: CrosscoderRunnerConfig) -> list[str | None]:
    n = len(cfg.model_names)
    archs = cfg.model_architectures or [None] * n
    if len(archs) != n:
        raise CrosscoderUserError(
            f"model_architectures lists {len(archs)} entries for {n} models; give one per model (null for none)"
        )
    return list(archs)


# ---- tokenizers ----------------------------------------------------------------------------
def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for a model id or local directory. Local directories are read with
    ``local_files_only`` so a missing file fails here rather than reaching the hub."""
    from transformers import AutoTokenizer

    local = is_local(name)
    try:
        return AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if local else name, local_files_only=local)
    except (OSError, ValueError) as exc:
        where = "the directory has no tokenizer files" if local else "it is not on the hub or in the HF cache"
        raise CrosscoderUserError(f"cannot load the tokenizer of {name!r}: {where} ({_first_line(exc)})") from None


def check_tokenizers(names: Sequence[str], tokenizers: Sequence[PreTrainedTokenizerBase]) -> None:
    """All models must tokenise identically, or "the same token" means nothing."""
    ref_name, ref = names[0], tokenizers[0]
    ref_vocab, ref_special = ref.get_vocab(), _special_tokens(ref)
    for name, tok in zip(names[1:], tokenizers[1:]):
        vocab = tok.get_vocab()
        if vocab != ref_vocab:
            diff = sorted(set(vocab.items()) ^ set(ref_vocab.items()), key=str)
            example = f"; e.g. {diff[0][0]!r}" if diff else ""
            raise CrosscoderUserError(
                f"tokenizer mismatch: {name!r} and {ref_name!r} have different vocabularies "
                f"({len(vocab)} vs {len(ref_vocab)} entries{example}); a diff needs models with one shared tokenizer"
            )
        special = _special_tokens(tok)
        if special != ref_special:
            key = next(k for k in sorted(set(special) | set(ref_special)) if special.get(k) != ref_special.get(k))
            raise CrosscoderUserError(
                f"tokenizer mismatch: {name!r} has {key}={special.get(key)!r} but {ref_name!r} has "
                f"{ref_special.get(key)!r}; a diff needs models with the same special tokens"
            )


def _special_tokens(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        out[attr] = getattr(tok, attr, None)
    out["all_special_ids"] = sorted(tok.all_special_ids)
    return out


# ---- models --------------------------------------------------------------------------------
def load_models(cfg: CrosscoderRunnerConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> list[HookedTransformer]:
    """Load every model of the config (tokenizers checked first, so a mismatched pair fails
    before any weights are read), on its device, in ``model_dtype``."""
    if len(cfg.model_names) < 2:
        raise CrosscoderUserError(f"model_names lists {len(cfg.model_names)} model(s); a diff needs at least 2")
    archs, devices = model_architectures(cfg), model_devices(cfg)
    dtype = resolve_dtype(cfg.model_dtype)
    if tokenizer is None:
        tokenizers = [load_tokenizer(name) for name in cfg.model_names]
        check_tokenizers(cfg.model_names, tokenizers)
        tokenizer = tokenizers[0]
    if cfg.hook_name or cfg.hook_names:
        precheck_hooks(cfg.model_names, archs, model_hook_names(cfg))
    kwargs = dict(cfg.model_from_pretrained_kwargs or {})
    models = [
        load_model(name, architecture=arch, device=device, dtype=dtype, tokenizer=tokenizer, **kwargs)
        for name, arch, device in zip(cfg.model_names, archs, devices)
    ]
    return models


def load_model(
    name: str,
    architecture: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    """One model as a HookedTransformer, unprocessed (no LN folding or centring)."""
    if tokenizer is None:
        tokenizer = load_tokenizer(name)
    if architecture is not None:
        return _load_into_official(name, architecture, device, dtype, tokenizer, **from_pretrained_kwargs)
    if is_local(name):
        return load_local_hf_model(name, device=device, dtype=dtype, tokenizer=tokenizer)
    if is_official(name):
        model = HookedTransformer.from_pretrained_no_processing(
            name, tokenizer=tokenizer, device=device, dtype=dtype, **from_pretrained_kwargs
        )
        return model.eval()
    raise CrosscoderUserError(
        f"model {name!r} is neither a TransformerLens official name nor a local directory; for a fine-tune of an "
        "official model set model_architectures to that official name (e.g. google/gemma-2-9b-it)"
    )


def _load_into_official(
    name: str,
    architecture: str,
    device: str,
    dtype: torch.dtype,
    tokenizer: PreTrainedTokenizerBase,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not is_official(architecture):
        raise CrosscoderUserError(
            f"model_architectures entry {architecture!r} for {name!r} is not a TransformerLens official name"
            + _suggest_official(architecture)
        )
    local = is_local(name)
    official = tl_loading.get_official_model_name(architecture)
    try:
        # the (small) config first: a mismatch fails before gigabytes of weights are read
        check_dims_match(name, AutoConfig.from_pretrained(name, local_files_only=local), architecture,
                         tl_loading.convert_hf_model_config(official))
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=local)
    except OSError as exc:
        raise CrosscoderUserError(f"cannot load the weights of {name!r}: {_first_line(exc)}") from None
    model = HookedTransformer.from_pretrained_no_processing(
        official, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype, **from_pretrained_kwargs
    )
    del hf_model
    return model.eval()


def check_dims_match(name: str, hf_config: Any, architecture: str, tl_cfg: dict[str, Any]) -> None:
    for hf_key, tl_key in _DIM_CHECKS:
        theirs, ours = getattr(hf_config, hf_key, None), tl_cfg.get(tl_key)
        if theirs is not None and ours is not None and theirs != ours:
            raise CrosscoderUserError(
                f"{name!r} does not fit architecture {architecture!r}: its {hf_key} is {theirs} but the "
                f"architecture has {tl_key}={ours}; set model_architectures to the model it was fine-tuned from"
            )


def load_local_hf_model(
    path: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> HookedTransformer:
    """A local HF checkpoint of an architecture TransformerLens converts, without the hub.

    TransformerLens's own ``from_pretrained`` only accepts official names, and keys some
    configs (Gemma-2) on the name, so the config is built from the local HF config and
    the weights are converted with TransformerLens's converters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path).expanduser().resolve()
    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    cfg_dict = hooked_config_dict(hf_config, str(path))
    cfg_dict.update(dtype=dtype, device=device, init_weights=False, model_name=path.name)
    cfg = HookedTransformerConfig(**cfg_dict)
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    state_dict = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
    del hf_model
    if tokenizer is None:
        tokenizer = load_tokenizer(str(path))
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device).eval()


def hooked_config_dict(hf_config: Any, path: str) -> dict[str, Any]:
    """TransformerLens config fields for a local HF config."""
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    if architecture == "Gemma2ForCausalLM":
        return _gemma2_config_dict(hf_config, path)
    try:
        return tl_loading.convert_hf_model_config(path)
    except NotImplementedError:
        raise CrosscoderUserError(
            f"{path} is a {architecture}, which TransformerLens cannot convert; use a supported architecture"
        ) from None


def _gemma2_config_dict(hf: Any, path: str) -> dict[str, Any]:
    # TransformerLens hard-codes Gemma-2 configs by model name; this mirrors those entries
    # with the dimensions read from the local config.
    n_layers = hf.num_hidden_layers
    layer_types = getattr(hf, "layer_types", None) or ["sliding_attention", "full_attention"] * (n_layers // 2)
    return {
        "d_model": hf.hidden_size,
        "d_head": hf.head_dim,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": n_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": getattr(hf, "hidden_activation", None) or "gelu_pytorch_tanh",
        "initializer_range": hf.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": tl_loading._get_rope_theta(hf),
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": math.sqrt(hf.query_pre_attn_scalar),
        "n_key_value_heads": hf.num_key_value_heads,
        "window_size": hf.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "attn_scores_soft_cap": hf.attn_logit_softcapping or -1.0,
        "output_logits_soft_cap": hf.final_logit_softcapping or -1.0,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
        "tokenizer_name": path,
    }


# ---- weightless skeletons --------------------------------------------------------------------
def skeleton_model(name: str, architecture: str | None = None) -> HookedTransformer | None:
    """The model's structure on the meta device (no weights, no hub for local paths and
    name-keyed official configs), or None if the config cannot be had cheaply."""
    try:
        if architecture is not None:
            cfg_dict = tl_loading.convert_hf_model_config(tl_loading.get_official_model_name(architecture))
        elif is_local(name):
            from transformers import AutoConfig

            path = str(Path(name).expanduser().resolve())
            cfg_dict = hooked_config_dict(AutoConfig.from_pretrained(path, local_files_only=True), path)
        elif is_official(name):
            cfg_dict = tl_loading.convert_hf_model_config(tl_loading.get_official_model_name(name))
        else:
            return None
    except (OSError, ValueError, NotImplementedError, CrosscoderUserError):
        return None  # the real load reports it
    cfg_dict.update(init_weights=False, device="meta", tokenizer_name=None)
    with torch.device("meta"):
        return HookedTransformer(HookedTransformerConfig(**cfg_dict), None, move_to_device=False)


def precheck_hooks(names: Sequence[str], architectures: Sequence[str | None], hook_names: Sequence[str]) -> None:
    """`check_hooks` on weightless skeletons, so a bad hook or a width mismatch fails in
    a second rather than after loading two large models."""
    skeletons = [skeleton_model(n, a) for n, a in zip(names, architectures)]
    if all(s is not None for s in skeletons):
        check_hooks(names, skeletons, hook_names)  # type: ignore[arg-type]


# ---- hooks ---------------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def stop_layer(model: HookedTransformer, hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still runs the hook: blocks after its own are skipped."""
    match = _BLOCK_RE.match(hook_name)
    if match:
        # stop_at_layer == n_layers still skips the final norm and the unembedding
        return int(match.group(1)) + 1
    if hook_name.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
        return 0
    return None


def check_hooks(names: Sequence[str], models: Sequence[HookedTransformer], hook_names: Sequence[str]) -> int:
    """Every model has its hook, and all hooks have one width; returns that width."""
    widths = []
    for name, model, hook in zip(names, models, hook_names):
        if hook not in model.hook_dict:
            raise CrosscoderUserError(f"model {name!r} has no hook {hook!r}{_nearest_hook_hint(model, hook)}")
        widths.append(hook_width(model, hook))
    for name, hook, width in zip(names[1:], hook_names[1:], widths[1:]):
        if width != widths[0]:
            raise CrosscoderUserError(
                f"d_model mismatch: {name!r} gives width {width} at {hook!r} but {names[0]!r} gives "
                f"{widths[0]} at {hook_names[0]!r}; a crosscoder needs one width for all models"
            )
    return widths[0]


def _nearest_hook_hint(model: HookedTransformer, hook: str) -> str:
    match = _BLOCK_RE.match(hook)
    n_layers = model.cfg.n_layers
    if match and int(match.group(1)) >= n_layers:
        # a layer past the end: the same hook on the last layer, not the closest spelling
        last = f"blocks.{n_layers - 1}.{hook[match.end():]}"
        if last in model.hook_dict:
            return f" (it has {n_layers} layers, 0-{n_layers - 1}); the nearest valid name is {last!r}"
    close = difflib.get_close_matches(hook, list(model.hook_dict), n=1, cutoff=0.0)
    return f"; the nearest valid name is {close[0]!r}" if close else ""


@torch.no_grad()
def hook_width(model: HookedTransformer, hook: str) -> int:
    # Widths are not in the config for every hook (heads, mlp_post); one token tells.
    token = torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(
        token, names_filter=[hook], stop_at_layer=stop_layer(model, hook), return_cache_object=False
    )
    act = cache[hook]
    if act.ndim != 3:
        raise CrosscoderUserError(
            f"hook {hook!r} gives activations of shape {list(act.shape)}; use a hook with one vector per token "
            "(e.g. hook_resid_post, hook_mlp_out, hook_attn_out)"
        )
    return int(act.shape[-1])


# ---- helpers -------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _suggest_official(name: str) -> str:
    close = difflib.get_close_matches(name, tl_loading.OFFICIAL_MODEL_NAMES, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- saved dictionaries ------------------------------------------------------------------------
def read_sae_cfg(path: str | Path) -> dict[str, Any] | None:
    """A saved SAE's cfg.json, or None when `path` holds none."""
    cfg_file = Path(path) / "cfg.json"
    if not cfg_file.is_file():
        return None
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError:
        return None


def load_saved_sae(path: str | Path, device: str = "cpu", what: str = "SAE") -> tuple[Any, dict[str, Any]]:
    """An SAE or crosscoder saved in SAELens's format (in eval mode) and its cfg.json, with
    one-line errors for a missing directory, a missing config or an unloadable save."""
    from sae_lens import SAE

    path = Path(path)
    if not path.is_dir():
        raise CrosscoderUserError(f"{what} directory {path} does not exist; pass the output_path of a training run")
    cfg = read_sae_cfg(path)
    if cfg is None:
        raise CrosscoderUserError(f"{path} has no readable cfg.json, so it is not a saved SAE; pass a run's output_path")
    try:
        sae = SAE.load_from_disk(path, device=device)
    except CrosscoderUserError:
        raise
    except Exception as exc:  # SAELens raises many types for unknown or broken saves
        raise CrosscoderUserError(f"cannot load the SAE in {path} (architecture {cfg.get('architecture')!r}): {exc}") from None
    sae.eval()
    return sae, cfg
