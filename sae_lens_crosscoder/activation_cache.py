"""The paired activation cache: format, validation, writing, and shuffled streaming.

Format: a directory of ``.safetensors`` shards (or a single file). Each shard holds
``activations`` of shape ``[n_tokens, n_models, d_model]`` (float32, bfloat16 or float16)
and optionally ``tokens`` of shape ``[n_tokens]`` (the token id at each row). Shards are
read in file-name order. A ``cache.json`` manifest (model names, hook names, ...) is written
by our writers and read when present, but not required.

Caches written by ``sae-lens-crosscoder cache`` (caching.py) hold rows in stream order
(the order the live paired store produces them, before shuffling; ``"order": "stream"``
in the manifest) and, so a token's context can be rebuilt, two more per-shard tensors and
one file:

- ``sequence_ids [n_tokens]`` (int64): global index of the context window the row came from;
- ``positions [n_tokens]`` (int64): the row's position in that window;
- ``contexts/tokens.safetensors``: ``tokens [n_sequences, context_size]`` (int64), every
  context window in full, excluded tokens (BOS, template tokens...) included, so
  ``contexts[sequence_ids[i], positions[i]] == tokens[i]``.

Their manifest also records model_names, hook_names, context_size, the datasets, the token
budget and where to resume an interrupted write.

Streaming is deterministic for a seed and resumable from a token position: each epoch
shuffles fixed-size chunks of the shards, groups consecutive chunks into windows of
``shuffle_buffer_tokens`` and permutes the tokens inside each window. Only one window is in
memory, so the cache may be far larger than RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae_lens_crosscoder.errors import CrosscoderUserError, DataError

ALLOWED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
MANIFEST = "cache.json"


@dataclass(frozen=True)
class Shard:
    path: Path
    n_tokens: int
    has_tokens: bool


@dataclass
class CacheInfo:
    path: Path
    shards: list[Shard]
    n_models: int
    d_model: int
    dtype: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def has_tokens(self) -> bool:
        return all(s.has_tokens for s in self.shards)


def open_cache(path: str | Path, model_names: list[str] | None = None) -> CacheInfo:
    """Validate a cache's layout (headers only, no data read) and describe it."""
    path = Path(path)
    if not path.exists():
        raise CrosscoderUserError(f"cached_activations_path {path} does not exist; write a cache first or fix the path")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CrosscoderUserError(f"no .safetensors shards in {path}; a cache is a directory of shards holding 'activations'")
    manifest: dict[str, Any] = {}
    if path.is_dir() and (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text())
    shards: list[Shard] = []
    shape_seen: tuple[int, int] | None = None
    dtype_seen: str | None = None
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = set(f.keys())
                if "activations" not in keys:
                    raise CrosscoderUserError(
                        f"shard {file.name} has no 'activations' tensor (found {sorted(keys)}); "
                        "each shard must hold activations [n_tokens, n_models, d_model]"
                    )
                acts = f.get_slice("activations")
                shape, dtype = tuple(acts.get_shape()), acts.get_dtype()
                tok_shape = tuple(f.get_slice("tokens").get_shape()) if "tokens" in keys else None
        except CrosscoderUserError:
            raise
        except Exception as exc:  # safetensors raises several error types on corrupt files
            raise CrosscoderUserError(f"shard {file} is not a readable safetensors file ({exc}); rewrite it") from None
        if len(shape) != 3:
            raise CrosscoderUserError(
                f"shard {file.name} holds activations of shape {list(shape)} (rank {len(shape)}); "
                "expected rank 3: [n_tokens, n_models, d_model]"
            )
        if dtype not in ALLOWED_DTYPES:
            raise CrosscoderUserError(
                f"shard {file.name} stores activations as {dtype}; use float32, bfloat16 or float16"
            )
        if shape_seen is not None and shape[1:] != shape_seen:
            raise CrosscoderUserError(
                f"shard {file.name} has [n_models, d_model] = {list(shape[1:])} but earlier shards have "
                f"{list(shape_seen)}; all shards of a cache must come from the same models and hook"
            )
        if dtype_seen is not None and dtype != dtype_seen:
            raise CrosscoderUserError(f"shard {file.name} is {dtype} but earlier shards are {dtype_seen}; use one dtype")
        if tok_shape is not None and tok_shape != (shape[0],):
            raise CrosscoderUserError(
                f"shard {file.name} has tokens of shape {list(tok_shape)} for {shape[0]} activation rows; "
                "tokens must be [n_tokens]"
            )
        shape_seen, dtype_seen = shape[1:], dtype
        if shape[0] > 0:
            shards.append(Shard(file, shape[0], tok_shape is not None))
    if not shards:
        raise CrosscoderUserError(f"cache {path} holds no tokens")
    assert shape_seen is not None and dtype_seen is not None
    info = CacheInfo(path, shards, shape_seen[0], shape_seen[1], dtype_seen, manifest)
    if info.n_models < 2:
        raise CrosscoderUserError(
            f"cache {path} has {info.n_models} model on its model axis; a crosscoder needs at least 2"
        )
    if model_names:
        if len(model_names) != info.n_models:
            raise CrosscoderUserError(
                f"model_names lists {len(model_names)} models but the cache's model axis has {info.n_models}; "
                "give one name per model, in the cache's order"
            )
        cached_names = manifest.get("model_names")
        if cached_names and list(cached_names) != list(model_names):
            raise CrosscoderUserError(
                f"model_names {list(model_names)} do not match the cache's {list(cached_names)}; "
                "use the cache's names in its model order"
            )
    return info


class PairedCacheWriter:
    """Append activations to a cache directory, one shard per `shard_tokens` rows.

    Shards are written to a temporary name and renamed, and the manifest records the
    shards completed so far, so an interrupted writer resumes after its last full shard.
    """

    def __init__(
        self,
        path: str | Path,
        n_models: int,
        d_model: int,
        shard_tokens: int = 65_536,
        dtype: torch.dtype = torch.float32,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.n_models, self.d_model, self.shard_tokens, self.dtype = n_models, d_model, shard_tokens, dtype
        self.manifest = {"format": "sae_lens_crosscoder.paired_cache.v1", **(manifest or {})}
        existing = read_manifest(self.path)
        self.shard_names: list[str] = list(existing.get("shards", []))
        self.n_tokens_written = int(existing.get("n_tokens", 0))
        self._acts: list[torch.Tensor] = []
        self._tokens: list[torch.Tensor] = []
        self._extras: dict[str, list[torch.Tensor]] = {}
        self._pending = 0

    def add(
        self,
        activations: torch.Tensor,
        tokens: torch.Tensor | None = None,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Append rows; `extras` are further per-row tensors (``[n]``) stored in each shard
        under their names (e.g. ``sequence_ids``, ``positions``)."""
        if activations.shape[1:] != (self.n_models, self.d_model):
            raise CrosscoderUserError(
                f"activations of shape {list(activations.shape)} do not match the cache's "
                f"[*, {self.n_models}, {self.d_model}]"
            )
        self._acts.append(activations.detach().to("cpu", self.dtype))
        if tokens is not None:
            self._tokens.append(tokens.detach().to("cpu", torch.long).reshape(-1))
        for key, value in (extras or {}).items():
            self._extras.setdefault(key, []).append(value.detach().to("cpu").reshape(-1))
        self._pending += activations.shape[0]
        while self._pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> CacheInfo:
        if self._pending:
            self._flush(self._pending)
        self._write_manifest(complete=True)
        return open_cache(self.path)

    def _flush(self, n: int) -> None:
        acts = torch.cat(self._acts)
        toks = torch.cat(self._tokens) if self._tokens else None
        name = f"shard_{len(self.shard_names):05d}.safetensors"
        extras = {key: torch.cat(parts) for key, parts in self._extras.items()}
        tensors = {"activations": acts[:n].contiguous()}
        if toks is not None:
            tensors["tokens"] = toks[:n].contiguous()
        for key, value in extras.items():
            tensors[key] = value[:n].contiguous()
        tmp = self.path / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.path / name)
        self.shard_names.append(name)
        self.n_tokens_written += n
        self._acts = [acts[n:]] if acts.shape[0] > n else []
        self._tokens = [toks[n:]] if toks is not None and toks.shape[0] > n else []
        self._extras = {key: [value[n:]] for key, value in extras.items() if value.shape[0] > n}
        self._pending -= n
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            **self.manifest,
            "n_models": self.n_models,
            "d_model": self.d_model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "shards": self.shard_names,
            "n_tokens": self.n_tokens_written,
            "complete": complete,
        }
        write_json_atomic(self.path / MANIFEST, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else {}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class CachedActivationProvider(Iterator[torch.Tensor]):
    """Infinite, shuffled, resumable stream of flat ``[batch, n_models * d_model]`` batches."""

    def __init__(
        self,
        cache: CacheInfo,
        batch_size: int,
        shuffle_buffer_tokens: int = 262_144,
        chunk_tokens: int = 8_192,
        seed: int = 42,
        device: str | torch.device = "cpu",
        with_tokens: bool = False,
        shuffle_chunks: bool = True,
    ) -> None:
        if batch_size > cache.n_tokens:
            raise CrosscoderUserError(
                f"train_batch_size_tokens={batch_size} exceeds the {cache.n_tokens} tokens in the cache; "
                "use a smaller batch or cache more tokens"
            )
        self.cache, self.batch_size, self.seed, self.device = cache, batch_size, seed, torch.device(device)
        self.with_tokens = with_tokens and cache.has_tokens
        self.chunks = [
            (i, start, min(start + chunk_tokens, shard.n_tokens))
            for i, shard in enumerate(cache.shards)
            for start in range(0, shard.n_tokens, chunk_tokens)
        ]
        self.window_chunks = max(1, -(-shuffle_buffer_tokens // chunk_tokens))
        self.shuffle_chunks = shuffle_chunks
        self.position = 0  # tokens served since the start of epoch 0
        self._window_key: tuple[int, int] | None = None
        self._window: torch.Tensor | None = None
        self._window_tokens: torch.Tensor | None = None
        self._window_start = 0  # epoch offset of the window's first token
        self._files: dict[int, Any] = {}
        self.last_tokens: torch.Tensor | None = None

    @property
    def n_models(self) -> int:
        return self.cache.n_models

    @property
    def d_model(self) -> int:
        return self.cache.d_model

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed, "n_tokens": self.cache.n_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n_tokens", self.cache.n_tokens) != self.cache.n_tokens:
            raise CrosscoderUserError(
                f"the checkpoint was trained on a cache of {state['n_tokens']} tokens but "
                f"{self.cache.path} holds {self.cache.n_tokens}; resume with the same cache"
            )
        self.seed = int(state.get("seed", self.seed))
        self.position = int(state["position"])
        self._window_key = None

    def __iter__(self) -> CachedActivationProvider:
        return self

    def __next__(self) -> torch.Tensor:
        start_position = self.position
        try:
            return self._next_batch()
        except BaseException:
            self.position = start_position  # a failed batch is not consumed
            raise

    def _next_batch(self) -> torch.Tensor:
        parts, token_parts, needed = [], [], self.batch_size
        while needed:
            epoch, offset = divmod(self.position, self.cache.n_tokens)
            self._ensure_window(epoch, offset)
            assert self._window is not None
            start = offset - self._window_start
            take = min(needed, self._window.shape[0] - start)
            parts.append(self._window[start : start + take])
            if self._window_tokens is not None:
                token_parts.append(self._window_tokens[start : start + take])
            self.position += take
            needed -= take
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.last_tokens = (torch.cat(token_parts) if len(token_parts) > 1 else token_parts[0]) if token_parts else None
        return batch.to(self.device, torch.float32).flatten(1)

    # ---- internals ---------------------------------------------------------------------
    def _epoch_windows(self, epoch: int) -> list[list[int]]:
        if self.shuffle_chunks:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.chunks), generator=gen).tolist()
        else:
            order = list(range(len(self.chunks)))
        return [order[i : i + self.window_chunks] for i in range(0, len(order), self.window_chunks)]

    def _ensure_window(self, epoch: int, offset: int) -> None:
        if self._window_key is not None and self._window_key[0] == epoch and self._window is not None:
            if self._window_start <= offset < self._window_start + self._window.shape[0]:
                return
        windows = self._epoch_windows(epoch)
        start = 0
        for w, chunk_ids in enumerate(windows):
            size = sum(self.chunks[c][2] - self.chunks[c][1] for c in chunk_ids)
            if offset < start + size:
                self._load_window(epoch, w, chunk_ids, start)
                return
            start += size
        raise AssertionError("offset beyond epoch")

    def _load_window(self, epoch: int, w: int, chunk_ids: list[int], start: int) -> None:
        acts, toks = [], []
        for c in chunk_ids:
            shard_idx, lo, hi = self.chunks[c]
            f = self._file(shard_idx)
            block = f.get_slice("activations")[lo:hi]
            if not torch.isfinite(block).all():
                bad = (~torch.isfinite(block.float())).flatten(1).any(1).nonzero()[0].item() + lo
                raise DataError(
                    f"NaN or inf in activations of {self.cache.shards[shard_idx].path.name} at row {bad}; "
                    "regenerate that shard (or drop it) and resume"
                )
            acts.append(block)
            if self.with_tokens:
                toks.append(f.get_slice("tokens")[lo:hi])
        window = torch.cat(acts)
        perm = window_permutation(self.seed, epoch, w, window.shape[0])
        self._window = window[perm]
        self._window_tokens = torch.cat(toks)[perm] if toks else None
        self._window_start = start
        self._window_key = (epoch, w)

    def _file(self, shard_idx: int) -> Any:
        if shard_idx not in self._files:
            if len(self._files) > 16:
                self._files.clear()
            self._files[shard_idx] = safe_open(str(self.cache.shards[shard_idx].path), framework="pt")
        return self._files[shard_idx]


def window_permutation(seed: int, epoch: int, window: int, n: int) -> torch.Tensor:
    """The token order inside one shuffle window. Shared with the live paired store, so a
    cache read without chunk shuffling yields the same batches as live training."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7_919 + window)
    return torch.randperm(n, generator=gen)
