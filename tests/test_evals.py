"""Per-model evals: splicing known reconstructions, reconstruction metrics, checkpoint evaluator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analysis_helpers import BOS, HOOK, FakeStore, identity_crosscoder, random_crosscoder, tiny_pair
from sae_lens_crosscoder.analysis import LiveSource, checkpoint_evaluator, splice_evals, splice_losses
from sae_lens_crosscoder.analysis.evals import ReconstructionStats, SpliceStats


def store_batch() -> tuple[FakeStore, torch.Tensor, torch.Tensor, torch.Tensor]:
    store = FakeStore(list(tiny_pair()), n_batches=1, batch=3, ctx=10)
    tokens = store.batches[0]
    return store, tokens, store.token_mask(tokens), store.paired_activations(tokens)


def test_perfect_reconstruction_changes_nothing() -> None:
    store, tokens, mask, acts = store_batch()
    cc = identity_crosscoder(2, 32, scaling=[0.37, 2.5])  # scaling in, unscaling out
    torch.testing.assert_close(cc.reconstruct(acts), acts, atol=1e-5, rtol=1e-5)
    stats = SpliceStats(2)
    stats.update(splice_evals(cc, store.models, store.hook_names, tokens, mask, acts))
    for name, m in stats.summary(["base", "chat"]).items():
        assert m["ce_delta"] == pytest.approx(0.0, abs=1e-5)
        assert m["kl_spliced"] == pytest.approx(0.0, abs=1e-6)
        assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
        assert abs(m["ce_zero_ablation"] - m["ce_clean"]) > 0.01  # ablation matters, so the ratio means something
        assert m["n_positions"] == int(mask[:, :-1].sum())


def test_splicing_zeros_equals_zero_ablation() -> None:
    store, tokens, mask, acts = store_batch()
    cc = identity_crosscoder(2, 32, scaling=[1.0, 1.0], zero=True)
    stats = SpliceStats(2)
    stats.update(splice_evals(cc, store.models, store.hook_names, tokens, mask, acts))
    for m in stats.summary(["base", "chat"]).values():
        assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablation"], rel=1e-9)
        assert m["kl_spliced"] == pytest.approx(m["kl_zero_ablation"], rel=1e-9)
        assert m["ce_recovered"] == pytest.approx(0.0, abs=1e-9)


def test_only_included_tokens_are_spliced_and_averaged() -> None:
    """Garbage at excluded tokens (BOS) must not matter: it is never spliced in."""
    store, tokens, mask, acts = store_batch()
    model = store.models[0]
    garbage = acts[:, :, 0].clone()
    garbage[~mask] = 1e3
    sums = splice_losses(model, HOOK, tokens, garbage, mask)
    assert sums["ce_spliced"] == pytest.approx(sums["ce_clean"], rel=1e-6)
    assert sums["n_positions"] == float(mask[:, :-1].sum())
    # and the averages use exactly those positions
    with torch.no_grad():
        logits = model(tokens)
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    assert sums["ce_clean"] == pytest.approx(float(-lp[mask[:, :-1]].sum()), rel=1e-6)
    assert not bool(mask[:, 0].any()) and bool((tokens[:, 0] == BOS).all())


def test_reconstruction_stats_match_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, 5, generator=gen) * torch.tensor([1.0, 4.0])[None, :, None] + 2.0
    recon = x + 0.3 * torch.randn(300, 2, 5, generator=gen)
    stats = ReconstructionStats(2, torch.tensor([2.0, 0.5]))
    for lo in range(0, 300, 70):
        stats.update(x[lo : lo + 70], recon[lo : lo + 70], n_active=7)
    summary = stats.summary(["a", "b"], dead_fraction=0.25)
    for m, name in enumerate(["a", "b"]):
        mse = (recon[:, m] - x[:, m]).pow(2).sum(-1).mean()
        var = (x[:, m] - x[:, m].mean(0)).pow(2).sum(-1).mean()
        assert summary["per_model"][name]["mse"] == pytest.approx(float(mse), rel=1e-5)
        assert summary["per_model"][name]["fve"] == pytest.approx(float(1 - mse / var), rel=1e-5)
        assert summary["per_model"][name]["mse_raw"] == pytest.approx(float(mse) / [4.0, 0.25][m], rel=1e-5)
    assert summary["l0"] == pytest.approx(5 * 7 / 300)
    assert summary["dead_fraction"] == 0.25


def test_checkpoint_evaluator_logs_per_model_evals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    store = FakeStore(list(tiny_pair()), n_batches=2, batch=2, ctx=10)
    source = LiveSource(store, model_names=["base", "chat"])
    evaluator = checkpoint_evaluator(source, n_tokens=30, ce_eval_tokens=10, log_to_wandb=True)
    perfect = identity_crosscoder(2, 32, scaling=[0.5, 0.5])
    noisy = random_crosscoder(2, 32, d_sae=64, seed=0)
    run = wandb.init(project="analysis-test", dir=str(tmp_path))
    try:
        good = evaluator(perfect, None, None, step=1)  # SAELens Evaluator signature
        bad = evaluator(noisy, step=2)
    finally:
        run.finish()
    assert good["eval/fve/base"] == pytest.approx(1.0, abs=1e-6)
    assert good["eval/ce_recovered/chat"] == pytest.approx(1.0, abs=1e-4)
    assert bad["eval/fve/base"] < 0.9 and bad["eval/kl_spliced/chat"] > 0.01 > good["eval/kl_spliced/chat"]
    assert good["eval/n_tokens"] == 30  # BOS excluded, budget respected
    assert set(good) == set(bad)
    assert list(tmp_path.glob("wandb/offline-run-*"))
