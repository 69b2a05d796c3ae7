"""Live training end to end: the tiny preset on the tiny Gemma-2 pair, through the CLI,
logging to W&B offline."""

from __future__ import annotations

import json

import pytest
import torch
import wandb
from sae_lens import SAE

from sae_lens_crosscoder import cli
from sae_lens_crosscoder.presets import load_preset, preset_path


@pytest.fixture(autouse=True)
def fresh_wandb():
    wandb.teardown()
    yield
    wandb.teardown()


def test_tiny_preset_live_run_end_to_end(tiny_gemma2_pair, text_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    inits, logged = [], []
    real_init, real_log = wandb.init, wandb.Run.log

    def record_init(*args, **kwargs):
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    def record_log(run, data, *args, **kwargs):
        logged.append(set(data))
        return real_log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", record_init)
    # wandb.init rebinds wandb.log to the run's method
    monkeypatch.setattr(wandb.Run, "log", record_log)
    out = tmp_path / "run"
    overrides = [
        f"model_names={json.dumps(tiny_gemma2_pair.names)}",
        f"dataset_path={text_jsonl}",
        f"output_path={out}",
        "log_to_wandb=true",
        "wandb_project=tiny-project",
        "wandb_entity=tiny-entity",
        "run_name=tiny-run",
        "wandb_tags=[live, tiny]",
        "wandb_log_frequency=20",
        "eval_every_n_wandb_logs=5",
    ]
    argv = ["train", str(preset_path("tiny-cpu-pair"))]
    for item in overrides:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    assert "saved batchtopk_crosscoder" in capsys.readouterr().out

    summary = json.loads((out / "training_summary.json").read_text())
    cfg = load_preset("tiny-cpu-pair")
    steps = cfg.training_tokens // cfg.train_batch_size_tokens
    assert steps >= 300
    assert summary["n_training_tokens"] == cfg.training_tokens and summary["n_training_steps"] == steps
    # it learned: most of the variance of both models' residual streams is explained
    assert summary["fve_model0"] > 0.5 and summary["fve_model1"] > 0.5
    assert summary["l0"] <= cfg.k + 1e-6

    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.d_in == 2 * 32 and sae.cfg.d_sae == cfg.d_sae
    assert sae.cfg.metadata.model_names == tiny_gemma2_pair.names
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert (out / "checkpoints" / "latest").is_file()

    # W&B: one offline run with the project, entity, name and tags; metrics and evals logged
    assert len(inits) == 1
    assert inits[0]["project"] == "tiny-project" and inits[0]["entity"] == "tiny-entity"
    assert inits[0]["name"] == "tiny-run" and inits[0]["tags"] == ["live", "tiny"]
    assert inits[0]["config"]["model_names"] == tiny_gemma2_pair.names
    assert any("losses/mse_loss" in keys for keys in logged)
    assert any("eval/fve_model1" in keys for keys in logged)
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_live_provider_feeds_the_trainer_identical_batches_twice(live_config, tmp_path):
    # the same config and seed give the same run: the live data path is deterministic
    from sae_lens_crosscoder.runner import train

    a = train(live_config(output_path=str(tmp_path / "a")))
    b = train(live_config(output_path=str(tmp_path / "b")))
    for name, value in a.sae.state_dict().items():
        assert torch.equal(value, b.sae.state_dict()[name]), name
