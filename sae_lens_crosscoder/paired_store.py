"""The paired activation store: N models on identical tokens, served as shuffled batches.

Pipeline (all deterministic for a seed):

1. `TokenStream` (data_sources.py) packs the dataset mix into ``context_size`` windows.
2. ``store_batch_size_prompts`` windows at a time run through every model up to the
   layer of its hook (``stop_at_layer``), each on its own device, giving
   ``[batch, ctx, n_models, d_model]``.
3. Excluded tokens (BOS, padding, optionally all special tokens, given ids, and chat
   template tokens) are dropped identically for all models, leaving rows in stream order.
4. Rows are grouped into shuffle windows of ``W = cache_shuffle_buffer_tokens`` (rounded
   up to ``cache_chunk_tokens``): window ``w`` is the next W rows, permuted by
   `activation_cache.window_permutation(seed, 0, w, W)`; training batches are read off
   the windows in order.

Step 4 is exactly how `CachedActivationProvider(shuffle_chunks=False)` reads a cache
written in stream order, so training from a cache written by ``sae-lens-crosscoder cache``
sees the same batches as live training. The data position is (window, offset in it, and
where the window's rows start in the token stream), a small JSON state: a resumed run
recomputes only the current window and continues on the batches the interrupted run
would have seen.

Why not SAELens's `ActivationsStore`: its mixing buffer draws `torch.randperm` from the
global RNG, and its resume state is only the number of dataset rows processed (the
buffer's contents are lost), so neither exact resume nor cache/live equality hold. The
store keeps SAELens's packing rules (data_sources.py) and its hook-running convention
(``run_with_cache(names_filter=[hook], stop_at_layer=layer + 1)``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_crosscoder.activation_cache import window_permutation
from sae_lens_crosscoder.data_sources import TokenStream, build_token_stream
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.loading import (
    check_hooks,
    check_tokenizers,
    load_models,
    load_tokenizer,
    model_architectures,
    model_devices,
    model_hook_names,
    resolve_dtype,
    stop_layer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sae_lens_crosscoder.config import CrosscoderRunnerConfig

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class RowBlock:
    """The rows of one forward batch, in stream order, and where the batch began."""

    stream_state: dict[str, Any]  # TokenStream position before this batch's windows
    activations: torch.Tensor  # [rows, n_models, d_model]
    tokens: torch.Tensor  # [rows]
    sequence_ids: torch.Tensor  # [rows] global index of the context window
    positions: torch.Tensor  # [rows] position in that window
    contexts: torch.Tensor  # [store_batch_size_prompts, ctx] the full windows

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])


def shuffle_window_tokens(cfg: CrosscoderRunnerConfig) -> int:
    """The live shuffle window: the cache reader's window (whole chunks), so both agree."""
    chunks = max(1, -(-cfg.cache_shuffle_buffer_tokens // cfg.cache_chunk_tokens))
    return chunks * cfg.cache_chunk_tokens


def validate_live_config(cfg: CrosscoderRunnerConfig) -> None:
    """Checks that need no model or data, run before anything is loaded."""
    if len(cfg.model_names) < 2:
        raise CrosscoderUserError(f"model_names lists {len(cfg.model_names)} model(s); a diff needs at least 2")
    if cfg.hook_name and cfg.hook_names:
        raise CrosscoderUserError("set hook_name (one hook for all models) or hook_names (one per model), not both")
    model_hook_names(cfg)
    model_devices(cfg)
    model_architectures(cfg)
    resolve_dtype(cfg.model_dtype)
    if cfg.context_size <= 1:
        raise CrosscoderUserError(f"context_size={cfg.context_size} must be at least 2")
    if cfg.store_batch_size_prompts <= 0:
        raise CrosscoderUserError(f"store_batch_size_prompts={cfg.store_batch_size_prompts} must be positive")
    if cfg.cache_chunk_tokens <= 0 or cfg.cache_shuffle_buffer_tokens <= 0:
        raise CrosscoderUserError("cache_chunk_tokens and cache_shuffle_buffer_tokens must be positive")
    window = shuffle_window_tokens(cfg)
    if window < cfg.train_batch_size_tokens:
        raise CrosscoderUserError(
            f"the shuffle buffer holds {window} tokens (cache_shuffle_buffer_tokens={cfg.cache_shuffle_buffer_tokens}) "
            f"but a training batch is {cfg.train_batch_size_tokens}; raise cache_shuffle_buffer_tokens to at least "
            f"train_batch_size_tokens (a few hundred batches mixes well)"
        )


def excluded_token_ids(tokenizer: PreTrainedTokenizerBase, exclude_special_tokens: bool | list[int]) -> list[int]:
    """BOS and padding always; all special tokens if True; plus the given ids if a list."""
    ids = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    if exclude_special_tokens is True:
        ids.update(tokenizer.all_special_ids)
    elif isinstance(exclude_special_tokens, list):
        ids.update(int(i) for i in exclude_special_tokens)
    return sorted(i for i in ids if i is not None)


class PairedActivationsStore(Iterator[torch.Tensor]):
    """Paired activations of N models on identical tokens.

    As an iterator it serves flat, model-major ``[train_batch_size_tokens, n_models *
    d_model]`` float32 batches, resumable through `state_dict` / `load_state_dict`. For
    analysis it offers `iter_token_batches`, `paired_activations` and `token_mask`.
    """

    def __init__(
        self,
        models: list[HookedTransformer],
        tokenizer: PreTrainedTokenizerBase,
        hook_names: list[str],
        stream_factory: Callable[[], TokenStream],
        *,
        model_names: list[str] | None = None,
        context_size: int,
        batch_size: int,
        store_batch_size_prompts: int = 16,
        shuffle_window: int = 262_144,
        exclude_special_tokens: bool | list[int] = True,
        exclude_template_tokens: bool = False,
        seed: int = 42,
        device: str | torch.device = "cpu",
        check: bool = True,
    ) -> None:
        self.models = models
        self.tokenizer = tokenizer
        self.hook_names = list(hook_names)
        self.model_names = list(model_names or [m.cfg.model_name for m in models])
        self.stream_factory = stream_factory
        self.context_size = context_size
        self.batch_size = batch_size
        self.store_batch_size_prompts = store_batch_size_prompts
        self.shuffle_window = shuffle_window
        self.exclude_template_tokens = exclude_template_tokens
        self.seed = seed
        self.device = torch.device(device)
        self.excluded_ids = excluded_token_ids(tokenizer, exclude_special_tokens)
        self._excluded = torch.tensor(self.excluded_ids, dtype=torch.long)
        self._stops = [stop_layer(m, h) for m, h in zip(models, self.hook_names)]
        self.d_model = check_hooks(self.model_names, models, self.hook_names) if check else models[0].cfg.d_model
        for name, model in zip(self.model_names, models):
            if context_size > model.cfg.n_ctx:
                raise CrosscoderUserError(
                    f"context_size={context_size} exceeds {name!r}'s maximum context of {model.cfg.n_ctx}"
                )
        # training position
        self._stream = stream_factory()
        self._blocks = self._row_blocks(self._stream)
        self._pending: RowBlock | None = None
        self._pending_used = 0
        self._window: torch.Tensor | None = None
        self._window_tokens: torch.Tensor | None = None
        self._window_index = -1
        self._window_offset = 0
        self._window_start: dict[str, Any] = {"stream": self._stream.state_dict(), "skip": 0}
        self.served = 0
        # throughput
        self.n_tokens_forward = 0
        self.forward_seconds = 0.0
        self.last_tokens: torch.Tensor | None = None

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        cfg: CrosscoderRunnerConfig,
        models: list[HookedTransformer] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> PairedActivationsStore:
        """Validate the config, check tokenizers, open the data, then load the models (the
        expensive step comes last, so mistakes surface in seconds)."""
        validate_live_config(cfg)
        if tokenizer is None:
            tokenizers = [load_tokenizer(name) for name in cfg.model_names]
            check_tokenizers(cfg.model_names, tokenizers)
            # one vocabulary, but base models may ship without the chat template
            tokenizer = next((t for t in tokenizers if getattr(t, "chat_template", None)), tokenizers[0])
        build_token_stream(cfg, tokenizer)  # opens and checks every dataset now
        if models is None:
            models = load_models(cfg, tokenizer=tokenizer)
        elif len(models) != len(cfg.model_names):
            raise CrosscoderUserError(f"{len(models)} models given for {len(cfg.model_names)} model_names")
        return cls(
            models,
            tokenizer,
            model_hook_names(cfg),
            lambda: build_token_stream(cfg, tokenizer),
            model_names=cfg.model_names,
            context_size=cfg.context_size,
            batch_size=cfg.train_batch_size_tokens,
            store_batch_size_prompts=cfg.store_batch_size_prompts,
            shuffle_window=shuffle_window_tokens(cfg),
            exclude_special_tokens=cfg.exclude_special_tokens,
            exclude_template_tokens=cfg.exclude_template_tokens,
            seed=cfg.seed,
            device=cfg.device,
        )

    @property
    def n_models(self) -> int:
        return len(self.models)

    # ---- analysis API ----------------------------------------------------------------------
    def iter_token_batches(
        self, batch_size: int | None = None, max_sequences: int | None = None, with_template: bool = False
    ) -> Iterator[Any]:
        """``[batch, context_size]`` token windows in dataset order, from the start of the
        data (independent of the training position). The datasets loop, so the stream is
        endless unless `max_sequences` is given. With `with_template`, yields
        ``(tokens, template_flags)``."""
        stream = self.stream_factory()
        batch_size = batch_size or self.store_batch_size_prompts
        produced = 0
        while max_sequences is None or produced < max_sequences:
            n = batch_size if max_sequences is None else min(batch_size, max_sequences - produced)
            windows = [next(stream) for _ in range(n)]
            tokens = torch.stack([w[0] for w in windows])
            produced += n
            yield (tokens, torch.stack([w[1] for w in windows])) if with_template else tokens

    @torch.inference_mode()
    def paired_activations(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw activations at each model's hook: ``[batch, ctx, n_models, d_model]`` on the
        store's device, in the models' dtype."""
        outputs = []
        # every model is launched before any result is copied, so models on different
        # GPUs run concurrently
        for model, hook, stop in zip(self.models, self.hook_names, self._stops):
            _, cache = model.run_with_cache(
                tokens.to(model.cfg.device), names_filter=[hook], stop_at_layer=stop, return_cache_object=False
            )
            outputs.append(cache[hook])
        return torch.stack([o.to(self.device) for o in outputs], dim=2)

    def token_mask(self, tokens: torch.Tensor, template: torch.Tensor | None = None) -> torch.Tensor:
        """False at excluded tokens (and at chat-template tokens when they are excluded and
        their flags are given)."""
        mask = ~torch.isin(tokens, self._excluded.to(tokens.device))
        if self.exclude_template_tokens and template is not None:
            mask &= ~template.to(mask.device)
        return mask

    # ---- rows in stream order --------------------------------------------------------------
    def _row_blocks(self, stream: TokenStream) -> Iterator[RowBlock]:
        while True:
            yield self._next_block(stream)

    def _next_block(self, stream: TokenStream) -> RowBlock:
        state = stream.state_dict()
        first = stream.sequence_index
        windows = [next(stream) for _ in range(self.store_batch_size_prompts)]
        tokens = torch.stack([w[0] for w in windows])
        template = torch.stack([w[1] for w in windows])
        start = time.perf_counter()
        acts = self.paired_activations(tokens)
        mask = self.token_mask(tokens, template)
        rows = acts[mask.to(acts.device)]
        self.forward_seconds += time.perf_counter() - start
        self.n_tokens_forward += tokens.numel()
        seq, pos = mask.nonzero(as_tuple=True)
        return RowBlock(state, rows, tokens[mask], seq + first, pos, tokens)

    def iter_row_blocks(self, stream_state: dict[str, Any] | None = None) -> Iterator[RowBlock]:
        """Forward batches of unshuffled rows from the start of the data (or a saved stream
        position); what the cache writer stores."""
        stream = self.stream_factory()
        if stream_state is not None:
            stream.load_state_dict(stream_state)
        return self._row_blocks(stream)

    # ---- training batches ------------------------------------------------------------------
    def __iter__(self) -> PairedActivationsStore:
        return self

    def __next__(self) -> torch.Tensor:
        parts, token_parts, needed = [], [], self.batch_size
        while needed:
            if self._window is None or self._window_offset >= self._window.shape[0]:
                self._fill_window(self._window_index + 1)
            assert self._window is not None and self._window_tokens is not None
            take = min(needed, self._window.shape[0] - self._window_offset)
            parts.append(self._window[self._window_offset : self._window_offset + take])
            token_parts.append(self._window_tokens[self._window_offset : self._window_offset + take])
            self._window_offset += take
            needed -= take
        self.served += self.batch_size
        self.last_tokens = torch.cat(token_parts) if len(token_parts) > 1 else token_parts[0]
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        return batch.to(torch.float32).flatten(1)

    def _fill_window(self, index: int) -> None:
        if self._pending is not None:
            self._window_start = {"stream": self._pending.stream_state, "skip": self._pending_used}
        else:
            self._window_start = {"stream": self._stream.state_dict(), "skip": 0}
        start = time.perf_counter()
        parts, token_parts, needed = [], [], self.shuffle_window
        while needed:
            if self._pending is None:
                self._pending, self._pending_used = next(self._blocks), 0
            block, used = self._pending, self._pending_used
            take = min(needed, block.n_rows - used)
            parts.append(block.activations[used : used + take])
            token_parts.append(block.tokens[used : used + take])
            self._pending_used += take
            needed -= take
            if self._pending_used >= block.n_rows:
                self._pending = None
        perm = window_permutation(self.seed, 0, index, self.shuffle_window).to(self.device)
        self._window = torch.cat(parts)[perm]
        self._window_tokens = torch.cat(token_parts).to(self.device)[perm]
        self._window_index, self._window_offset = index, 0
        elapsed = time.perf_counter() - start
        logger.info(
            "paired store: window %d (%d tokens) in %.1fs; model forwards %.0f tok/s",
            index,
            self.shuffle_window,
            elapsed,
            self.n_tokens_forward / max(self.forward_seconds, 1e-9),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "shuffle_window": self.shuffle_window,
            "context_size": self.context_size,
            "store_batch_size_prompts": self.store_batch_size_prompts,
            "window_index": self._window_index,
            "window_offset": self._window_offset,
            "window_start": self._window_start,
            "served": self.served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("shuffle_window", "context_size", "store_batch_size_prompts"):
            if state.get(key) != getattr(self, key):
                raise CrosscoderUserError(
                    f"the checkpoint's data position was saved with {key}={state.get(key)} but the config gives "
                    f"{getattr(self, key)}; resume with the config the run started with"
                )
        self.seed = int(state["seed"])
        self.served = int(state["served"])
        self._stream.load_state_dict(state["window_start"]["stream"])
        self._blocks = self._row_blocks(self._stream)
        self._pending, self._pending_used = None, 0
        self._window, self._window_tokens = None, None
        index = int(state["window_index"])
        if index < 0:  # nothing served yet
            self._window_index, self._window_offset = -1, 0
            self._window_start = {"stream": self._stream.state_dict(), "skip": 0}
            return
        skip = int(state["window_start"]["skip"])
        if skip:
            self._pending, self._pending_used = next(self._blocks), skip
        self._fill_window(index)
        self._window_offset = int(state["window_offset"])


def build_live_provider(cfg: CrosscoderRunnerConfig) -> PairedActivationsStore:
    """The runner's data provider for live training (models loaded from the config)."""
    return PairedActivationsStore.from_config(cfg)
