"""`mode: difference`: a SAELens SAE trained on x[finetuned] - x[base] from a paired cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE

from sae_lens_crosscoder.activation_cache import PairedCacheWriter
from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.runner import train
from sae_lens_crosscoder.synthetic import PairedSyntheticSource, planted_paired_features

D_MODEL = 16


def changed_pair(n: int, seed: int, rate: float = 0.03, noise: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identical content in both models except a planted change (one direction, added to
    the second model only) at a random 3 % of positions, plus small drift noise."""
    gen = torch.Generator().manual_seed(seed)
    planted = planted_paired_features(d_model=D_MODEL, n_shared=12, n_exclusive=0, seed=seed)
    base = PairedSyntheticSource(planted, firing_probability=0.15, seed=seed).sample(n)[:, 0]
    direction = torch.nn.functional.normalize(torch.randn(D_MODEL, generator=gen), dim=0)
    where = torch.rand(n, generator=gen) < rate
    finetuned = base + noise * torch.randn(n, D_MODEL, generator=gen)
    finetuned[where] += 2.0 * direction
    return torch.stack([base, finetuned], dim=1), where, direction


@pytest.fixture(scope="module")
def difference_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("difference")
    acts, where, direction = changed_pair(200_000, seed=0)
    writer = PairedCacheWriter(root / "cache", 2, D_MODEL, shard_tokens=50_000, manifest={"model_names": ["pt", "ft"]})
    writer.add(acts)
    writer.close()
    cfg = CrosscoderRunnerConfig(
        mode="difference", architecture="batchtopk", d_sae=8, k=0.04, cached_activations_path=str(root / "cache"),
        training_tokens=400_000, train_batch_size_tokens=1024, output_path=str(root / "out"),
    )
    return train(cfg), root, direction


def test_difference_latent_fires_exactly_on_the_changed_positions(difference_run):
    result, root, direction = difference_run
    sae = SAE.load_from_disk(root / "out")
    acts, where, _ = changed_pair(20_000, seed=1)  # held-out tokens, fresh positions
    latents = sae.encode(acts[:, 1] - acts[:, 0])
    active = latents > 0
    best = int(active[where].float().mean(0).argmax())
    fires = active[:, best]
    precision = (fires & where).sum() / fires.sum()
    recall = (fires & where).sum() / where.sum()
    assert precision > 0.99 and recall > 0.99
    # unchanged content: nothing beyond noise is active
    assert active[~where].float().sum(-1).mean() < 0.01
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[best], direction, dim=0)
    assert cos > 0.95


def test_difference_sae_records_its_pair_and_round_trips(difference_run, tmp_path: Path):
    result, root, _ = difference_run
    cfg = json.loads((root / "out" / "cfg.json").read_text())
    assert cfg["d_in"] == D_MODEL
    assert cfg["metadata"]["difference_of"] == {"base": "pt", "finetuned": "ft"}
    assert cfg["metadata"]["model_names"] == ["pt", "ft"]
    assert cfg["architecture"] == "jumprelu"  # SAELens saves BatchTopK as JumpReLU
    loaded = SAE.load_from_disk(root / "out")
    loaded.save_model(tmp_path / "again")
    again = SAE.load_from_disk(tmp_path / "again")
    x = torch.randn(64, D_MODEL)
    assert torch.equal(again(x), loaded(x))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_difference_mode_rejects_crosscoder_architectures():
    with pytest.raises(CrosscoderUserError, match="difference mode trains a SAELens SAE"):
        from sae_lens_crosscoder.runner import build_sae_config

        build_sae_config(
            CrosscoderRunnerConfig(mode="difference", architecture="batchtopk_crosscoder", d_sae=8, model_names=["a", "b"]),
            d_model=4, n_models=2,
        )
