"""``sae-lens-crosscoder cache CONFIG``: write the paired activations of a live config to disk.

The cache holds the rows the live paired store would train on, in stream order (before
shuffling), sharded (``cache_shard_tokens`` rows per shard), up to ``cache_token_budget``
tokens; see the format in activation_cache.py. Training from it with the same config
(``cached_activations_path``) reads the shards in order and shuffles them in the same
windows as the live store, so it sees the same batches as live training.

A rerun after an interruption continues after the last complete shard: the manifest
records, with each shard, the token-stream position to restart from.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from sae_lens_crosscoder.activation_cache import PairedCacheWriter, read_manifest
from sae_lens_crosscoder.config import CrosscoderRunnerConfig, add_overrides_argument
from sae_lens_crosscoder.data_sources import source_specs
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.loading import model_hook_names, resolve_dtype
from sae_lens_crosscoder.paired_store import PairedActivationsStore, shuffle_window_tokens

logger = logging.getLogger(__name__)

CONTEXTS_DIR = "contexts"
CONTEXTS_FILE = "tokens.safetensors"
# manifest keys that must match for a rerun to continue an existing cache
RESUME_KEYS = ("model_names", "hook_names", "context_size", "prepend_bos", "datasets", "store_batch_size_prompts",
               "excluded_token_ids", "exclude_template_tokens", "model_dtype", "shard_tokens")


def default_token_budget(cfg: CrosscoderRunnerConfig) -> int:
    """Enough for the run the config describes (its norm-estimation batches plus
    ``training_tokens``), in whole shuffle windows, so a cached run matches a live one."""
    needed = cfg.training_tokens + cfg.n_batches_for_norm_estimate * cfg.train_batch_size_tokens
    window = shuffle_window_tokens(cfg)
    return -(-needed // window) * window


def cache_manifest(cfg: CrosscoderRunnerConfig, budget: int) -> dict[str, Any]:
    """What the cache records about its source (the excluded ids are added once the
    tokenizer is loaded)."""
    return {
        "order": "stream",
        "model_names": list(cfg.model_names),
        "hook_names": model_hook_names(cfg),
        "model_architectures": cfg.model_architectures,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "datasets": [asdict(spec) for spec in source_specs(cfg)],
        "store_batch_size_prompts": cfg.store_batch_size_prompts,
        "exclude_template_tokens": cfg.exclude_template_tokens,
        "model_dtype": cfg.model_dtype,
        "shard_tokens": cfg.cache_shard_tokens,
        "token_budget": budget,
    }


def cache_activations(
    cfg: CrosscoderRunnerConfig,
    out: str | Path | None = None,
    store: PairedActivationsStore | None = None,
    progress: bool = True,
) -> Path:
    """Write (or finish writing) the paired cache of a live config; returns its path."""
    path = Path(out or cfg.cached_activations_path or "")
    if not str(path) or str(path) == ".":
        raise CrosscoderUserError("say where to write the cache: --out DIR, or cached_activations_path in the config")
    if cfg.cache_shard_tokens <= 0 or cfg.cache_shard_tokens % cfg.cache_chunk_tokens:
        raise CrosscoderUserError(
            f"cache_shard_tokens={cfg.cache_shard_tokens} must be a positive multiple of cache_chunk_tokens="
            f"{cfg.cache_chunk_tokens}, so shards split into whole read chunks"
        )
    budget = cfg.cache_token_budget if cfg.cache_token_budget is not None else default_token_budget(cfg)
    if budget <= 0:
        raise CrosscoderUserError(f"cache_token_budget={budget} must be positive")
    existing = read_manifest(path) if path.is_dir() else {}
    manifest = cache_manifest(cfg, budget)
    if existing:  # checked before the models load, so a wrong rerun fails at once
        _check_resumable(path, existing, manifest, [k for k in RESUME_KEYS if k != "excluded_token_ids"])
        if existing.get("complete"):
            if existing.get("n_tokens", 0) >= budget:
                logger.info("cache %s is already complete (%d tokens)", path, existing["n_tokens"])
                return path
            raise CrosscoderUserError(
                f"{path} is complete at {existing.get('n_tokens')} tokens, fewer than cache_token_budget="
                f"{budget}; write the larger cache to a new directory"
            )
    if store is None:
        store = PairedActivationsStore.from_config(cfg)
    manifest["excluded_token_ids"] = store.excluded_ids
    # where the analysis finds the tokenizer to turn cached token ids back into text
    manifest["tokenizer"] = getattr(store.tokenizer, "name_or_path", None) or cfg.model_names[0]
    if existing:
        _check_resumable(path, existing, manifest, ["excluded_token_ids"])
        _remove_unlisted_shards(path, existing.get("shards", []))
    writer = PairedCacheWriter(
        path, store.n_models, store.d_model, cfg.cache_shard_tokens, resolve_dtype(cfg.cache_dtype), manifest
    )
    written = writer.n_tokens_written
    resume = existing.get("resume") if written else None
    start_state = resume["stream"] if resume else None
    skip = int(resume["skip"]) if resume else 0
    if written:
        logger.info("resuming cache %s after %d tokens (%d shards)", path, written, len(writer.shard_names))

    contexts: list[torch.Tensor] = []
    first_sequence = int(start_state["sequence_index"]) if start_state else 0
    if first_sequence:
        contexts.append(_replay_contexts(store, first_sequence))
    bar = tqdm(total=budget, initial=written, unit="tok", desc="caching", disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    for block in store.iter_row_blocks(start_state):
        contexts.append(block.contexts)
        used = skip
        skip = 0
        while used < block.n_rows and written < budget:
            room = cfg.cache_shard_tokens - written % cfg.cache_shard_tokens
            take = min(room, block.n_rows - used, budget - written)
            if take == room:
                # this add completes a shard: record where the next one starts
                writer.manifest["resume"] = {"stream": block.stream_state, "skip": used + take}
            rows = slice(used, used + take)
            writer.add(
                block.activations[rows],
                block.tokens[rows],
                extras={"sequence_ids": block.sequence_ids[rows], "positions": block.positions[rows]},
            )
            used += take
            written += take
            bar.update(take)
        if written >= budget:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    writer.manifest.pop("resume", None)
    writer.manifest["n_sequences"] = int(sum(c.shape[0] for c in contexts))
    _write_contexts(path, torch.cat(contexts))
    info = writer.close()
    logger.info(
        "cache %s: %d tokens in %d shards; model forwards %.0f tok/s, %.0f cached tok/s overall",
        path, info.n_tokens, len(info.shards),
        store.n_tokens_forward / max(store.forward_seconds, 1e-9),
        (written - (existing.get("n_tokens", 0) if existing else 0)) / max(elapsed, 1e-9),
    )
    return path


def _replay_contexts(store: PairedActivationsStore, n_sequences: int) -> torch.Tensor:
    # a resumed write has no record of earlier windows; re-reading the text is cheap (no models)
    return torch.cat(list(store.iter_token_batches(batch_size=256, max_sequences=n_sequences)))


def _write_contexts(path: Path, tokens: torch.Tensor) -> None:
    folder = path / CONTEXTS_DIR
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{CONTEXTS_FILE}.tmp"
    save_file({"tokens": tokens.to(torch.long).contiguous()}, str(tmp))
    tmp.replace(folder / CONTEXTS_FILE)


def _check_resumable(path: Path, existing: dict[str, Any], manifest: dict[str, Any], keys: list[str]) -> None:
    if existing.get("format") is None or existing.get("order") != "stream":
        raise CrosscoderUserError(f"{path} holds a cache not written by `cache`; choose an empty --out directory")
    for key in keys:
        if existing.get(key) != manifest.get(key):
            raise CrosscoderUserError(
                f"{path} holds a cache written with a different {key} ({existing.get(key)!r} vs {manifest.get(key)!r}); "
                "rerun with the config that started it, or choose another --out directory"
            )


def _remove_unlisted_shards(path: Path, shards: list[str]) -> None:
    # a shard renamed into place just before a crash, but not yet in the manifest, is redone
    listed = set(shards)
    for file in path.glob("*.safetensors"):
        if file.name not in listed:
            file.unlink()


# ---- CLI -----------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config (model_names, hook_name, dataset_path, ...)")
    parser.add_argument("--out", help="cache directory (default: cached_activations_path from the config)")
    add_overrides_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = CrosscoderRunnerConfig.from_file(args.config, args.overrides)
    cached = cfg.cached_activations_path
    # the config may name the cache it is about to write; the live source is what counts here
    cfg.cached_activations_path = None
    path = cache_activations(cfg, out=args.out or cached, progress=not args.no_progress)
    manifest = read_manifest(path)
    print(f"cached {manifest.get('n_tokens')} tokens of {len(cfg.model_names)} models to {path}")
    return 0

