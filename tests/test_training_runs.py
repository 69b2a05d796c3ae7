"""Training from a paired cache: planted-feature recovery, the CLI, config handling,
one-line errors, the cache reader, checkpoints and exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from sae_lens import SAE

from sae_lens_crosscoder.activation_cache import CachedActivationProvider, PairedCacheWriter, open_cache
from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.runner import train
from sae_lens_crosscoder.synthetic import (
    PairedSyntheticSource,
    match_planted,
    planted_paired_features,
    write_synthetic_cache,
)

MODEL_SCALES = [1.0, 5.0]


@pytest.fixture(scope="module")
def planted():
    # 16 shared + 6 + 6 exclusive features; firing probability 2/28 -> true L0 = 2
    return planted_paired_features(d_model=32, n_shared=16, n_exclusive=6, seed=0)


@pytest.fixture(scope="module")
def cache(planted, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "paired"
    source = PairedSyntheticSource(planted, firing_probability=2 / 28, model_scales=MODEL_SCALES, seed=1)
    write_synthetic_cache(path, source, 300_000, shard_tokens=50_000, model_names=["base", "chat"])
    return path


def write_config(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_batchtopk_recovers_planted_features(planted, cache, tmp_path):
    cfg = CrosscoderRunnerConfig(
        architecture="batchtopk_crosscoder", d_sae=64, k=2, cached_activations_path=str(cache),
        training_tokens=1_000_000, train_batch_size_tokens=1024, output_path=str(tmp_path / "out"),
    )
    result = train(cfg)
    sae = SAE.load_from_disk(tmp_path / "out")
    decoder = sae.W_dec.detach().unflatten(-1, (2, 32))
    match = match_planted(decoder, planted, sae.activation_scaling_factors * torch.tensor(MODEL_SCALES))
    assert match["cosine"].min() > 0.9
    rel = sae.relative_decoder_norms()[match["latent"]]
    kinds = planted.kinds
    for i, kind in enumerate(kinds):
        if kind == "only:0":
            assert rel[i] < 0.1
        elif kind == "only:1":
            assert rel[i] > 0.9
        else:
            assert 0.3 < rel[i] < 0.7
    # per-model scaling undid the 5x norm difference: factors differ by ~5x
    factors = sae.activation_scaling_factors
    assert factors[0] / factors[1] == pytest.approx(5.0, rel=0.05)
    assert result.summary["fve_model0"] > 0.85 and result.summary["fve_model1"] > 0.85
    assert result.summary["l0"] == pytest.approx(2.0, abs=0.01)


def test_cli_train_writes_saelens_format(cache, tmp_path, capsys):
    config = write_config(
        tmp_path / "run.yaml", architecture="crosscoder", d_sae=32, cached_activations_path=str(cache),
        model_names=["base", "chat"], training_tokens=40_960, train_batch_size_tokens=1024,
        output_path=str(tmp_path / "out"), seed=3,
    )
    assert main(["train", str(config), "--set", "l1_coefficient=0.5", "--set", "lr=1e-3"]) == 0
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == "crosscoder" and cfg["d_in"] == 64 and cfg["n_models"] == 2
    assert cfg["metadata"]["model_names"] == ["base", "chat"]
    runner_cfg = json.loads((tmp_path / "out" / "runner_cfg.json").read_text())
    assert runner_cfg["l1_coefficient"] == 0.5 and runner_cfg["lr"] == 1e-3
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["n_training_tokens"] >= 40_960
    assert sum(summary["relative_norm_histogram"]["relative_decoder_norm_0_1"]) == 32
    assert "saved crosscoder" in capsys.readouterr().out


def test_nested_saelens_style_config_is_flattened():
    cfg = CrosscoderRunnerConfig.from_dict(
        {"sae": {"architecture": "topk_crosscoder", "d_sae": 64, "k": 8}, "logger": {"wandb_project": "p"},
         "lr": "3e-4", "training_tokens": 10_000}
    )
    assert (cfg.architecture, cfg.d_sae, cfg.k, cfg.wandb_project, cfg.lr) == ("topk_crosscoder", 64, 8.0, "p", 3e-4)
    assert CrosscoderRunnerConfig.from_dict(cfg.to_dict()) == cfg


def test_defaults_scale_with_dictionary():
    cfg = CrosscoderRunnerConfig(architecture="batchtopk_crosscoder", d_sae=2**16, training_tokens=4096 * 50_000)
    assert cfg.resolved_lr(2**16) == pytest.approx(1e-4)  # 2e-4 / sqrt(2**16 / 2**14)
    assert cfg.resolved_warm_up_steps() == 1000 and cfg.resolved_decay_steps() == 10_000
    assert cfg.resolved_dead_feature_window() == 10_000_000 // 4096
    short = CrosscoderRunnerConfig(d_sae=64, training_tokens=4096 * 200)
    assert short.resolved_warm_up_steps() == 10 and short.resolved_dead_feature_window() == 20


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def write_raw_cache(path: Path, shards: list[torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    for i, acts in enumerate(shards):
        save_file({"activations": acts}, str(path / f"s{i}.safetensors"))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("rank", "rank 2"),
        ("shape", "all shards of a cache must come from the same models"),
        ("names", "model_names lists 3 models but the cache's model axis has 2"),
        ("arch", "unknown architecture 'batchtopk_crosscoderr'"),
        ("key", "unknown config key 'l1_coefficent' (did you mean 'l1_coefficient'?)"),
        ("type", "config key 'd_sae' expects an integer"),
        ("missing", "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(case, message, tmp_path, capsys):
    good = torch.randn(2048, 2, 8)
    values = dict(architecture="crosscoder", d_sae=16, training_tokens=4096, train_batch_size_tokens=512,
                  output_path=str(tmp_path / "out"))
    if case == "rank":
        values["cached_activations_path"] = str(write_raw_cache(tmp_path / "c", [torch.randn(100, 16)]))
    elif case == "shape":
        values["cached_activations_path"] = str(write_raw_cache(tmp_path / "c", [good, torch.randn(100, 2, 9)]))
    else:
        values["cached_activations_path"] = str(write_raw_cache(tmp_path / "c", [good]))
    if case == "names":
        values["model_names"] = ["a", "b", "c"]
    if case == "arch":
        values["architecture"] = "batchtopk_crosscoderr"
    if case == "key":
        values["l1_coefficent"] = 1.0
    if case == "type":
        values["d_sae"] = "big"
    if case == "missing":
        values["cached_activations_path"] = str(tmp_path / "nowhere")
    code, err = run_cli(["train", str(write_config(tmp_path / "bad.yaml", **values))], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert message in err


def test_nan_mid_run_saves_progress_and_resumes(tmp_path, capsys):
    clean = torch.randn(4096, 2, 8)
    cache = write_raw_cache(tmp_path / "c", [clean, clean.clone()])
    poisoned = load_file(str(cache / "s1.safetensors"))["activations"]
    poisoned[100, 1, 3] = float("nan")
    save_file({"activations": poisoned}, str(cache / "s1.safetensors"))
    reader = dict(batch_size=512, shuffle_buffer_tokens=1024, chunk_tokens=1024)
    seed = next(s for s in range(50) if batches_before_error(open_cache(cache), seed=s, **reader) >= 6)
    config = write_config(
        tmp_path / "run.yaml", architecture="crosscoder", d_sae=16, cached_activations_path=str(cache),
        training_tokens=32_768, train_batch_size_tokens=512, cache_shuffle_buffer_tokens=1024,
        cache_chunk_tokens=1024, output_path=str(tmp_path / "out"), n_batches_for_norm_estimate=1, seed=seed,
    )
    code, err = run_cli(["train", str(config)], capsys)
    assert code == 2 and "NaN or inf in activations of s1.safetensors at row 100" in err
    latest = json.loads((tmp_path / "out" / "checkpoints" / "latest").read_text())
    assert latest["n_training_tokens"] > 0  # the work done before the bad shard is on disk
    save_file({"activations": clean}, str(cache / "s1.safetensors"))
    assert run_cli(["train", str(config), "--resume"], capsys)[0] == 0
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["n_training_tokens"] == 32_768


def batches_before_error(info, **kwargs) -> int:
    provider = CachedActivationProvider(info, **kwargs)
    for count in range(1000):
        try:
            next(provider)
        except CrosscoderUserError:
            return count
    return 1000


class SimulatedCrash(Exception):
    pass


def test_resume_after_crash_equals_uninterrupted_run(cache, tmp_path, monkeypatch):
    common = dict(
        architecture="batchtopk_crosscoder", d_sae=32, k=2, cached_activations_path=str(cache),
        training_tokens=60 * 512, train_batch_size_tokens=512, checkpoint_every_tokens=20 * 512,
        n_batches_for_norm_estimate=4, seed=7,
    )
    reference = train(CrosscoderRunnerConfig(output_path=str(tmp_path / "full"), **common))

    calls = {"n": 0}
    real_next = CachedActivationProvider.__next__

    def crashing_next(self):
        calls["n"] += 1
        if calls["n"] == 4 + 33:  # after the checkpoint at 20 steps, before the one at 40
            raise SimulatedCrash
        return real_next(self)

    cfg = CrosscoderRunnerConfig(output_path=str(tmp_path / "killed"), **common)
    monkeypatch.setattr(CachedActivationProvider, "__next__", crashing_next)
    with pytest.raises(SimulatedCrash):
        train(cfg)
    monkeypatch.setattr(CachedActivationProvider, "__next__", real_next)
    assert json.loads((tmp_path / "killed" / "checkpoints" / "latest").read_text())["checkpoint"] == str(21 * 512)
    with pytest.raises(CrosscoderUserError, match="pass --resume"):
        train(CrosscoderRunnerConfig(output_path=str(tmp_path / "killed"), **common))
    resumed = train(CrosscoderRunnerConfig(output_path=str(tmp_path / "killed"), **common), resume=True)
    assert resumed.summary["n_training_tokens"] == reference.summary["n_training_tokens"]
    for name, tensor in reference.sae.state_dict().items():
        assert torch.allclose(resumed.sae.state_dict()[name], tensor, atol=1e-6), name
    # an architecture change is refused rather than silently loaded
    other = dict(common, architecture="topk_crosscoder")
    with pytest.raises(CrosscoderUserError, match="is a 'batchtopk_crosscoder' but the config trains 'topk_crosscoder'"):
        train(CrosscoderRunnerConfig(output_path=str(tmp_path / "killed"), **other), resume=True)


def test_cache_reader_visits_every_token_once_per_epoch_and_resumes(tmp_path):
    n = 5000
    writer = PairedCacheWriter(tmp_path / "c", n_models=2, d_model=3, shard_tokens=1200)
    ids = torch.arange(n, dtype=torch.float32)
    writer.add(ids[:, None, None].expand(n, 2, 3).contiguous(), tokens=torch.arange(n))
    info = writer.close()
    assert [s.n_tokens for s in info.shards] == [1200, 1200, 1200, 1200, 200]
    provider = CachedActivationProvider(info, batch_size=500, shuffle_buffer_tokens=1000, chunk_tokens=300, seed=5)
    epoch = torch.cat([next(provider)[:, 0] for _ in range(10)])
    assert sorted(epoch.long().tolist()) == list(range(n))
    assert epoch.long().tolist() != list(range(n))  # shuffled
    state = provider.state_dict()
    ahead = [next(provider) for _ in range(3)]
    fresh = CachedActivationProvider(info, batch_size=500, shuffle_buffer_tokens=1000, chunk_tokens=300, seed=5)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, next(fresh)) for a in ahead)
    # a different seed gives a different order over the same tokens
    other = CachedActivationProvider(info, batch_size=500, shuffle_buffer_tokens=1000, chunk_tokens=300, seed=6)
    assert not torch.equal(next(other), epoch[:500])


def test_bfloat16_cache_and_tokens_round_trip(tmp_path):
    acts = torch.randn(300, 2, 4).to(torch.bfloat16)
    writer = PairedCacheWriter(tmp_path / "c", 2, 4, shard_tokens=128, dtype=torch.bfloat16,
                               manifest={"model_names": ["a", "b"]})
    writer.add(acts, tokens=torch.arange(300))
    info = writer.close()
    assert info.dtype == "BF16" and info.n_tokens == 300 and info.has_tokens
    with pytest.raises(CrosscoderUserError, match="do not match the cache's"):
        open_cache(tmp_path / "c", ["b", "a"])
    provider = CachedActivationProvider(info, batch_size=300, shuffle_buffer_tokens=300, chunk_tokens=300,
                                        with_tokens=True, shuffle_chunks=False)
    batch = next(provider)
    order = provider.last_tokens
    assert torch.equal(batch, acts[order].float().flatten(1))


def test_cache_writer_resumes_after_interruption(tmp_path):
    acts = torch.randn(1000, 2, 4)
    writer = PairedCacheWriter(tmp_path / "c", 2, 4, shard_tokens=300)
    writer.add(acts[:700])  # two full shards written, 100 rows pending, then the process dies
    del writer
    resumed = PairedCacheWriter(tmp_path / "c", 2, 4, shard_tokens=300)
    assert resumed.n_tokens_written == 600
    resumed.add(acts[600:])
    info = resumed.close()
    assert info.n_tokens == 1000
    rows = torch.cat([load_file(str(s.path))["activations"] for s in info.shards])
    assert torch.equal(rows, acts)
    shutil.rmtree(tmp_path / "c")


def test_per_model_metrics_and_histograms_reach_wandb(cache, tmp_path, monkeypatch):
    import wandb

    logged: list[dict] = []
    real_log = wandb.sdk.wandb_run.Run.log  # wandb.init rebinds wandb.log to the run's method

    run_dirs: set[str] = set()

    def capture(run, data, *args, **kwargs):
        logged.append(dict(data))
        run_dirs.add(run.dir)
        return real_log(run, data, *args, **kwargs)

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", capture)
    cfg = CrosscoderRunnerConfig(
        architecture="batchtopk_crosscoder", d_sae=32, k=2, cached_activations_path=str(cache),
        training_tokens=40 * 512, train_batch_size_tokens=512, checkpoint_every_tokens=20 * 512,
        output_path=str(tmp_path / "out"), log_to_wandb=True, wandb_log_frequency=5, eval_every_n_wandb_logs=2,
        run_name="metrics-test", wandb_tags=["test"],
    )
    train(cfg)
    keys = set().union(*logged)
    for key in ("metrics/mse_model0", "metrics/fve_model1", "metrics/dead_fraction", "metrics/l0",
                "eval/fve_model0", "checkpoint/relative_decoder_norm_0_1", "checkpoint/fve_model1"):
        assert key in keys, key
    step_logs = [d for d in logged if "metrics/fve_model0" in d]
    assert all(-1.0 < d["metrics/fve_model0"] <= 1.0 for d in step_logs)
    # wandb keeps its first directory setting for the process, so look where the run wrote
    assert len(run_dirs) == 1
    run_dir = Path(run_dirs.pop())
    assert run_dir.is_dir() and run_dir.parent.name.startswith("offline-run-"), "an offline run directory is written"
