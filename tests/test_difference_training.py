"""Training SAELens SAEs beside crosscoders through the `train` command: every SAELens
architecture on the difference, the reverse direction, and the per-model baseline (`single`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from sae_lens import SAE

from sae_lens_crosscoder.activation_cache import PairedCacheWriter
from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.runner import SingleModelProvider, build_sae_config, train
from test_difference_mode import D_MODEL, changed_pair

ARCHITECTURES = {  # SAELens saves the BatchTopK family as JumpReLU
    "standard": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    root = tmp_path_factory.mktemp("difference_training")
    acts, where, direction = changed_pair(60_000, seed=0)
    writer = PairedCacheWriter(root / "cache", 2, D_MODEL, shard_tokens=60_000, manifest={"model_names": ["pt", "ft"]})
    writer.add(acts)
    writer.close()
    return root / "cache", direction


def write_config(path: Path, **values: object) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_saelens_architecture_trains_on_the_difference_from_the_cli(
    architecture: str, cache: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    extra: dict[str, object] = {"k": 1} if "topk" in architecture else {}
    if architecture == "standard":
        extra["l1_coefficient"] = 2.0  # the crosscoder keys set SAELens's own penalties
    if architecture == "jumprelu":
        extra["l0_coefficient"] = 0.5
    config = write_config(tmp_path / "run.yaml", mode="difference", architecture=architecture, d_sae=8,
                          cached_activations_path=str(cache[0]), training_tokens=20_480,
                          train_batch_size_tokens=1024, output_path=str(tmp_path / "out"), **extra)
    assert main(["train", str(config)]) == 0
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == ARCHITECTURES[architecture] and cfg["d_in"] == D_MODEL and cfg["d_sae"] == 8
    assert cfg["metadata"]["difference_of"] == {"base": "pt", "finetuned": "ft"}
    details = cfg["metadata"]["training_architecture_details"]
    assert cfg["metadata"]["training_architecture"] == architecture
    if architecture == "standard":
        assert details["l1_coefficient"] == 2.0
    if architecture == "jumprelu":
        assert details["l0_coefficient"] == 0.5
    if architecture == "matryoshka_batchtopk":
        assert details["matryoshka_widths"] == [1, 2, 4, 8]
    sae = SAE.load_from_disk(tmp_path / "out")
    assert sae(torch.randn(4, D_MODEL)).shape == (4, D_MODEL)


def test_reverse_direction_learns_the_negated_change(cache: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    """difference_pair [1, 0] trains on base - finetuned: the change latent's decoder points
    against the planted direction, and the recorded pair is swapped."""
    path, direction = cache
    cfg = CrosscoderRunnerConfig(mode="difference", difference_pair=[1, 0], architecture="batchtopk", d_sae=8, k=0.05,
                                 cached_activations_path=str(path), training_tokens=122_880,
                                 train_batch_size_tokens=1024, output_path=str(tmp_path / "reverse"))
    train(cfg)
    sae = SAE.load_from_disk(tmp_path / "reverse")
    assert json.loads((tmp_path / "reverse" / "cfg.json").read_text())["metadata"]["difference_of"] == {
        "base": "ft", "finetuned": "pt"}
    acts, where, _ = changed_pair(10_000, seed=1)
    active = sae.encode(acts[:, 0] - acts[:, 1]) > 0
    best = int(active[where].float().mean(0).argmax())
    assert active[where, best].float().mean() > 0.99 and active[~where, best].float().mean() < 0.01
    assert torch.nn.functional.cosine_similarity(sae.W_dec[best], direction, dim=0) < -0.95


def test_single_mode_trains_a_plain_sae_on_one_model(cache: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    config = write_config(tmp_path / "single.yaml", mode="single", model_index=1, architecture="topk", k=2, d_sae=16,
                          cached_activations_path=str(cache[0]), training_tokens=20_480,
                          train_batch_size_tokens=1024, hook_name="blocks.1.hook_resid_post",
                          output_path=str(tmp_path / "single"))
    assert main(["train", str(config)]) == 0
    meta = json.loads((tmp_path / "single" / "cfg.json").read_text())["metadata"]
    assert meta["single_model"] == "ft" and meta["model_name"] == "ft" and "difference_of" not in meta
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert SAE.load_from_disk(tmp_path / "single").cfg.d_in == D_MODEL

    # the provider serves exactly that model's rows
    class Paired:
        n_models, d_model = 2, 3

        def __next__(self) -> torch.Tensor:
            return torch.arange(12.0).view(2, 6)

    assert torch.equal(next(SingleModelProvider(Paired(), 1)), torch.tensor([[3.0, 4, 5], [9, 10, 11]]))
    with pytest.raises(CrosscoderUserError, match="model_index 2 names model 2 but the data has 2 models"):
        SingleModelProvider(Paired(), 2)


def test_sae_mode_config_errors() -> None:
    with pytest.raises(CrosscoderUserError, match="single mode trains a SAELens SAE"):
        build_sae_config(CrosscoderRunnerConfig(mode="single", architecture="crosscoder", d_sae=8, model_names=["a", "b"]),
                         d_model=4, n_models=2)
    with pytest.raises(CrosscoderUserError, match="l0_coefficient applies to architecture"):
        CrosscoderRunnerConfig(mode="difference", architecture="standard", l0_coefficient=1.0)
    with pytest.raises(CrosscoderUserError, match="expected one of 'crosscoder', 'difference', 'single'"):
        CrosscoderRunnerConfig.from_dict({"mode": "both"})
    with pytest.raises(CrosscoderUserError, match="model_index=-1 must be a model's index"):
        CrosscoderRunnerConfig(mode="single", architecture="topk", model_index=-1)
