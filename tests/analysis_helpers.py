"""Builders shared by the analysis tests: caches with sequence structure, crosscoders with
known weights, a tiny model pair behind a fake paired store, and one trained L1 crosscoder
on planted data (built once per test session)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

import sae_lens_crosscoder  # noqa: F401  (registers the architectures)
from sae_lens_crosscoder.activation_cache import PairedCacheWriter
from sae_lens_crosscoder.architectures.relu import Crosscoder, CrosscoderConfig

MODEL_NAMES = ["base", "chat"]


def write_sequence_cache(
    path: Path,
    acts: torch.Tensor,
    tokens: torch.Tensor,
    included: torch.Tensor,
    shard_tokens: int,
    with_sequences: bool = True,
    with_contexts: bool = True,
    model_names: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """A cache in stream order from [S, T, n_models, d] activations of S windows of T tokens;
    rows only for `included` positions (the cache command drops BOS and the like). Adds
    per-row sequence_ids/positions to every shard and contexts/tokens.safetensors, as the
    cache command does. Returns the rows' sequence, position and shard."""
    n_models, d_model = acts.shape[2], acts.shape[3]
    seq_idx, pos_idx = included.nonzero(as_tuple=True)  # row-major: stream order
    writer = PairedCacheWriter(
        path, n_models, d_model, shard_tokens=shard_tokens,
        manifest={"model_names": model_names or MODEL_NAMES[:n_models] + [f"m{i}" for i in range(2, n_models)]},
    )
    writer.add(acts[seq_idx, pos_idx], tokens[seq_idx, pos_idx])
    info = writer.close()
    shard_of = torch.zeros(seq_idx.numel(), dtype=torch.long)
    start = 0
    for i, shard in enumerate(info.shards):
        shard_of[start : start + shard.n_tokens] = i
        if with_sequences:
            tensors = load_file(str(shard.path))
            tensors["sequence_ids"] = seq_idx[start : start + shard.n_tokens].clone()
            tensors["positions"] = pos_idx[start : start + shard.n_tokens].clone()
            save_file(tensors, str(shard.path))
        start += shard.n_tokens
    if with_contexts:
        (path / "contexts").mkdir(exist_ok=True)
        save_file({"tokens": tokens.long().contiguous()}, str(path / "contexts" / "tokens.safetensors"))
    return {"sequence": seq_idx, "position": pos_idx, "shard": shard_of}


def random_crosscoder(
    n_models: int = 2,
    d_model: int = 6,
    d_sae: int = 10,
    seed: int = 0,
    scaling: list[float] | None = None,
    bias: float = -0.5,
    model_names: list[str] | None = None,
) -> Crosscoder:
    """A ReLU crosscoder with random weights; a negative encoder bias keeps it sparse."""
    gen = torch.Generator().manual_seed(seed)
    cfg = CrosscoderConfig(d_in=n_models * d_model, d_sae=d_sae, n_models=n_models, dtype="float32", device="cpu")
    cfg.metadata.model_names = model_names or (MODEL_NAMES + [f"m{i}" for i in range(2, n_models)])[:n_models]
    cc = Crosscoder(cfg)
    with torch.no_grad():
        cc.W_enc.copy_(torch.randn(cfg.d_in, d_sae, generator=gen) / cfg.d_in**0.5)
        cc.W_dec.copy_(torch.randn(d_sae, cfg.d_in, generator=gen) / d_model**0.5)
        cc.b_enc.fill_(bias)
        cc.b_dec.copy_(0.1 * torch.randn(cfg.d_in, generator=gen))
        if scaling is not None:
            cc.set_activation_scaling_factors(scaling)
    return cc


def identity_crosscoder(n_models: int, d_model: int, scaling: list[float], zero: bool = False) -> Crosscoder:
    """Reconstructs its input exactly (latents relu(x_i) and relu(-x_i)), or outputs zeros."""
    d_in = n_models * d_model
    cfg = CrosscoderConfig(d_in=d_in, d_sae=2 * d_in, n_models=n_models, dtype="float32", device="cpu")
    cc = Crosscoder(cfg)
    eye = torch.eye(d_in)
    with torch.no_grad():
        cc.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        cc.W_dec.copy_(torch.zeros(2 * d_in, d_in) if zero else torch.cat([eye, -eye], dim=0))
        cc.b_enc.zero_()
        cc.b_dec.zero_()
        cc.set_activation_scaling_factors(scaling)
    return cc


# ---- tiny live models -------------------------------------------------------------------------
HOOK = "blocks.0.hook_resid_post"
BOS = 0
VOCAB = 50


def tiny_model(seed: int) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=VOCAB,
        act_fn="gelu", normalization_type="LN", seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


class FakeStore:
    """The paired store's interface over fixed random token batches (BOS at position 0)."""

    def __init__(self, models: list[HookedTransformer], n_batches: int = 3, batch: int = 4, ctx: int = 12, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.models = models
        self.hook_names = [HOOK] * len(models)
        self.tokenizer = None
        self.batches = torch.randint(1, VOCAB, (n_batches, batch, ctx), generator=gen)
        self.batches[:, :, 0] = BOS

    def iter_token_batches(self):
        yield from self.batches

    @torch.no_grad()
    def paired_activations(self, tokens: torch.Tensor) -> torch.Tensor:
        acts = []
        for model, hook in zip(self.models, self.hook_names):
            _, cache = model.run_with_cache(tokens, names_filter=[hook])
            acts.append(cache[hook])
        return torch.stack(acts, dim=2)

    def token_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens != BOS


@functools.lru_cache(maxsize=1)
def tiny_pair() -> tuple[HookedTransformer, HookedTransformer]:
    return tiny_model(1), tiny_model(2)


# ---- a trained L1 crosscoder on planted data ---------------------------------------------------
@functools.lru_cache(maxsize=1)
def trained_l1() -> dict[str, Any]:
    """L1 crosscoder on planted features: 6 shared, 3 exclusive per model, and 3 present in
    both but 4x weaker in the base (the Complete Shrinkage case). The L1 penalty pushes the
    weaker features' base decoders down until delta-norm calls them chat-only."""
    from sae_lens_crosscoder.config import CrosscoderRunnerConfig
    from sae_lens_crosscoder.runner import train
    from sae_lens_crosscoder.synthetic import PairedSyntheticSource, planted_paired_features, write_synthetic_cache

    root = Path(tempfile.mkdtemp(prefix="analysis_l1_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # shared across tests, removed at exit
    features = planted_paired_features(
        d_model=16, n_shared=6, n_exclusive=3, n_weaker=3, weak_factor=0.25, weaker_model=0, seed=0
    )
    source = PairedSyntheticSource(features, firing_probability=0.08, seed=0)
    write_synthetic_cache(root / "cache", source, n_tokens=65_536, shard_tokens=16_384, model_names=MODEL_NAMES)
    cfg = CrosscoderRunnerConfig(
        architecture="crosscoder",
        d_sae=32,
        l1_coefficient=1.75,
        lr=1e-2,
        cached_activations_path=str(root / "cache"),
        model_names=list(MODEL_NAMES),
        train_batch_size_tokens=512,
        training_tokens=512 * 200,
        n_batches_for_norm_estimate=8,
        output_path=str(root / "crosscoder"),
    )
    train(cfg)
    return {"root": root, "cache": root / "cache", "crosscoder": root / "crosscoder", "features": features}
