"""Where the analysis pass reads activations from: a paired cache, or live models.

Both yield `SourceBatch`es in stream order (no shuffling). A batch carries, besides the
rows it counts (`core`), a halo of neighbouring rows so that every counted token's context
window is inside the batch; the window of a token is the rows of the same sequence within
`window` positions.

Cache layout read here (on top of `activation_cache`'s): optional per-row `sequence_ids`
and `positions` in each shard, and `<cache>/contexts/tokens.safetensors` with `tokens
[n_sequences, context_size]` (full windows, excluded tokens included). Without sequence ids
a shard counts as one sequence and the row index inside it as the position.

Live sources wrap the paired store (`iter_token_batches`, `paired_activations`,
`token_mask`, `models`, `hook_names`, `tokenizer`); see `StoreLike`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from sae_lens_crosscoder.activation_cache import CacheInfo, open_cache
from sae_lens_crosscoder.errors import CrosscoderUserError

logger = logging.getLogger(__name__)

CONTEXTS_FILE = Path("contexts") / "tokens.safetensors"
DEFAULT_LIVE_TOKENS = 1_000_000


@dataclass
class SourceBatch:
    """Rows in stream order. acts [R, n_models, d_model] are raw activations.

    valid: rows that are real, included tokens (their activations may be shown in windows).
    core: rows this batch counts (valid, inside the batch proper, within the budget).
    sequence / position: where each row sits; tokens: its token id (-1 if unknown).
    token_batch / token_mask: the [batch, ctx] tokens of a live batch, for CE/KL evals."""

    acts: torch.Tensor
    valid: torch.Tensor
    core: torch.Tensor
    sequence: torch.Tensor
    position: torch.Tensor
    tokens: torch.Tensor
    token_batch: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    @property
    def n_core(self) -> int:
        return int(self.core.sum())


class ActivationSource(Protocol):
    n_models: int
    d_model: int
    model_names: list[str] | None
    tokenizer: Any
    description: dict[str, Any]

    def batches(self, n_tokens: int | None, batch_tokens: int, window: int) -> Iterator[SourceBatch]: ...

    def budget(self, n_tokens: int | None) -> int: ...

    def context_tokens(self, sequences: torch.Tensor) -> torch.Tensor | None:
        """Full context windows [len(sequences), ctx] (excluded tokens included), if known."""
        ...


# ---- paired cache ---------------------------------------------------------------------------
class CacheSource:
    """Reads a paired cache in stream order as one row array across shards."""

    def __init__(self, path: str | Path, tokenizer: Any = None) -> None:
        self.cache: CacheInfo = open_cache(path)
        self.path = Path(path)
        self.n_models, self.d_model = self.cache.n_models, self.cache.d_model
        names = self.cache.manifest.get("model_names")
        self.model_names = list(names) if names else None
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer_from_manifest(self.cache.manifest)
        self.starts = [0]
        for shard in self.cache.shards:
            self.starts.append(self.starts[-1] + shard.n_tokens)
        self._files: dict[int, Any] = {}
        keys = self._keys(0)
        self.has_sequences = "sequence_ids" in keys and "positions" in keys
        self.has_tokens = self.cache.has_tokens
        for i in range(1, len(self.cache.shards)):
            if ("sequence_ids" in self._keys(i)) != ("sequence_ids" in keys):
                raise CrosscoderUserError(
                    f"shard {self.cache.shards[i].path.name} and the first shard disagree on having "
                    "'sequence_ids'; every shard of a cache must carry the same tensors"
                )
        contexts = self.path / CONTEXTS_FILE
        self.contexts_path = contexts if self.path.is_dir() and contexts.is_file() else None
        self.description = {
            "kind": "cache",
            "path": str(self.path),
            "n_tokens_available": self.cache.n_tokens,
            "sequence_ids": self.has_sequences,
            "contexts": self.contexts_path is not None,
        }

    def _file(self, i: int) -> Any:
        if i not in self._files:
            self._files[i] = safe_open(str(self.cache.shards[i].path), framework="pt")
        return self._files[i]

    def _keys(self, i: int) -> set[str]:
        return set(self._file(i).keys())

    def budget(self, n_tokens: int | None) -> int:
        return self.cache.n_tokens if n_tokens is None else min(n_tokens, self.cache.n_tokens)

    def read_rows(self, lo: int, hi: int) -> dict[str, torch.Tensor]:
        """Rows [lo, hi) of the whole cache: acts, tokens, sequence, position."""
        parts: dict[str, list[torch.Tensor]] = {"acts": [], "tokens": [], "sequence": [], "position": []}
        for i, shard in enumerate(self.cache.shards):
            start, end = self.starts[i], self.starts[i + 1]
            a, b = max(lo, start), min(hi, end)
            if a >= b:
                continue
            f = self._file(i)
            s, e = a - start, b - start
            parts["acts"].append(f.get_slice("activations")[s:e])
            n = e - s
            parts["tokens"].append(
                f.get_slice("tokens")[s:e].long() if shard.has_tokens else torch.full((n,), -1, dtype=torch.long)
            )
            if self.has_sequences:
                parts["sequence"].append(f.get_slice("sequence_ids")[s:e].long())
                parts["position"].append(f.get_slice("positions")[s:e].long())
            else:  # a shard is one long sequence
                parts["sequence"].append(torch.full((n,), i, dtype=torch.long))
                parts["position"].append(torch.arange(s, e, dtype=torch.long))
        return {k: torch.cat(v) for k, v in parts.items()}

    def batches(self, n_tokens: int | None, batch_tokens: int, window: int) -> Iterator[SourceBatch]:
        total, budget = self.cache.n_tokens, self.budget(n_tokens)
        for lo in range(0, budget, batch_tokens):
            hi = min(lo + batch_tokens, budget)
            read_lo, read_hi = max(0, lo - window), min(total, hi + window)
            rows = self.read_rows(read_lo, read_hi)
            index = torch.arange(read_lo, read_hi)
            core = (index >= lo) & (index < hi)
            yield SourceBatch(
                acts=rows["acts"],
                valid=torch.ones_like(core),
                core=core,
                sequence=rows["sequence"],
                position=rows["position"],
                tokens=rows["tokens"],
            )

    def context_tokens(self, sequences: torch.Tensor) -> torch.Tensor | None:
        if self.contexts_path is None:
            return None
        with safe_open(str(self.contexts_path), framework="pt") as f:
            table = f.get_slice("tokens")
            n_seq = table.get_shape()[0]
            if sequences.numel() and int(sequences.max()) >= n_seq:
                raise CrosscoderUserError(
                    f"{self.contexts_path} holds {n_seq} sequences but the cache refers to sequence "
                    f"{int(sequences.max())}; rewrite the cache's contexts"
                )
            unique, inverse = torch.unique(sequences, return_inverse=True)  # sorted
            if unique.numel() == 0:
                return torch.zeros(0, 0, dtype=torch.long)
            # read spans of nearby sequences in one slice each rather than one slice per row
            blocks, i, ids = [], 0, unique.tolist()
            while i < len(ids):
                j = i
                while j + 1 < len(ids) and ids[j + 1] - ids[i] < 4096:
                    j += 1
                span = table[ids[i] : ids[j] + 1]
                blocks.append(span[unique[i : j + 1] - ids[i]])
                i = j + 1
        return torch.cat(blocks).long()[inverse]


def load_tokenizer_from_manifest(manifest: dict[str, Any]) -> Any:
    """A tokenizer named by the cache manifest (`tokenizer_path` / `tokenizer`): a local
    directory, or a hub id when the hub is reachable; None if there is none or it cannot be
    loaded (examples then show token ids)."""
    for key in ("tokenizer_path", "tokenizer"):
        name = manifest.get(key)
        if not name:
            continue
        if Path(name).is_dir():
            return load_tokenizer(name)
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name)
        except Exception:  # offline, gated or unknown: fall back to token ids
            return None
    return None


def load_tokenizer(path: str | Path) -> Any:
    if not Path(path).exists():
        raise CrosscoderUserError(f"tokenizer {path} does not exist; pass a local tokenizer directory")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types for unreadable tokenizers
        raise CrosscoderUserError(f"cannot load the tokenizer at {path} ({exc}); pass a tokenizer directory") from None


# ---- live models --------------------------------------------------------------------------
class StoreLike(Protocol):
    """The paired store interface the live source needs."""

    models: list[Any]
    hook_names: list[str]
    tokenizer: Any

    def iter_token_batches(self) -> Iterator[torch.Tensor]: ...

    def paired_activations(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def token_mask(self, tokens: torch.Tensor) -> torch.Tensor: ...


class LiveSource:
    """Runs the models on the store's token batches (whole sequences, dataset order)."""

    def __init__(self, store: StoreLike, model_names: list[str] | None = None) -> None:
        self.store = store
        self.models = list(store.models)
        self.hook_names = list(store.hook_names)
        self.tokenizer = store.tokenizer
        self.model_names = list(model_names or getattr(store, "model_names", None) or []) or None
        self.n_models = len(self.models)
        cfgs = [getattr(m, "cfg", None) for m in self.models]
        self.d_model = int(getattr(store, "d_model", None) or (cfgs[0].d_model if cfgs[0] is not None else -1))
        # stores that can exclude chat-template tokens need the template flags for the mask
        params = inspect.signature(store.iter_token_batches).parameters
        self._with_template = "with_template" in params
        self.description = {"kind": "live", "hook_names": self.hook_names}

    def budget(self, n_tokens: int | None) -> int:
        return DEFAULT_LIVE_TOKENS if n_tokens is None else n_tokens

    def _token_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._with_template:
            for tokens, template in self.store.iter_token_batches(with_template=True):  # type: ignore[call-arg]
                yield tokens, self.store.token_mask(tokens, template)  # type: ignore[call-arg]
        else:
            for tokens in self.store.iter_token_batches():
                yield tokens, self.store.token_mask(tokens)

    def batches(self, n_tokens: int | None, batch_tokens: int, window: int) -> Iterator[SourceBatch]:
        budget, served, n_seq = self.budget(n_tokens), 0, 0
        for tokens, mask in self._token_batches():
            if served >= budget:
                break
            acts = self.store.paired_activations(tokens)
            mask = mask.to(torch.bool)
            batch, ctx = tokens.shape
            if acts.shape[:2] != (batch, ctx) or acts.ndim != 4:
                raise CrosscoderUserError(
                    f"the paired store returned activations of shape {list(acts.shape)} for tokens {list(tokens.shape)}; "
                    "expected [batch, ctx, n_models, d_model]"
                )
            valid = mask.flatten().cpu()
            # count tokens up to the budget; the rest of the batch is context only
            core = valid & (valid.cumsum(0) <= budget - served)
            served += int(core.sum())
            yield SourceBatch(
                acts=acts.flatten(0, 1),
                valid=valid,
                core=core,
                sequence=(torch.arange(batch) + n_seq).repeat_interleave(ctx),
                position=torch.arange(ctx).repeat(batch),
                tokens=tokens.flatten().long().cpu(),
                token_batch=tokens,
                token_mask=mask,
            )
            n_seq += batch

    def context_tokens(self, sequences: torch.Tensor) -> torch.Tensor | None:
        return None  # every position of a live sequence is a row, so windows are complete


def open_live_store(run_config: Any) -> StoreLike:
    """The paired store of a run config (it loads the models named there)."""
    try:
        from sae_lens_crosscoder.paired_store import PairedActivationsStore
    except ModuleNotFoundError as exc:
        raise CrosscoderUserError(
            f"analysing with live models needs {exc.name}, which this install lacks; "
            "pass --activations CACHE instead"
        ) from None
    return PairedActivationsStore.from_config(run_config)  # type: ignore[return-value]
