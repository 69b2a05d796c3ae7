"""The W&B sweep in tutorials/: its parameters reach the run config, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from wandb.sdk.lib import config_util

from sae_lens_crosscoder import sweep
from sae_lens_crosscoder.config import CrosscoderRunnerConfig

SWEEP_YAML = Path(__file__).resolve().parents[1] / "tutorials" / "sweep.yaml"


@pytest.fixture(autouse=True)
def fresh_wandb():
    # wandb reads its environment (sweep parameter file, run id) once per process setup
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


def program_args(spec: dict) -> list[str]:
    """The arguments the agent passes to our program (after ``-m sae_lens_crosscoder.sweep``)."""
    command = spec["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "sae_lens_crosscoder.sweep"]
    return [str(a) for a in command[4:]]


def draw(parameters: dict) -> dict:
    """One deterministic draw per parameter, away from the base config's values."""
    out = {}
    for name, p in parameters.items():
        out[name] = p["values"][-1] if "values" in p else p["min"] * 1.5
    return out


def tiny_overrides(tiny_gemma2_pair, text_jsonl) -> list[str]:
    # the sweep's base is the 9B preset; shrink it to the tiny pair on CPU
    values = {
        "model_names": tiny_gemma2_pair.names,
        "model_architectures": None,
        "hook_name": "blocks.1.hook_resid_post",
        "datasets": None,
        "dataset_path": str(text_jsonl),
        "context_size": 32,
        "model_dtype": "float32",
        "devices": None,
        "device": "cpu",
        "autocast": False,
        "expansion_factor": 8,
        "train_batch_size_tokens": 256,
        "training_tokens": 256 * 20,
        "cache_shuffle_buffer_tokens": 1024,
        "cache_chunk_tokens": 256,
        "store_batch_size_prompts": 8,
        "n_batches_for_norm_estimate": 2,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def test_sweep_yaml_parameters_are_config_keys():
    spec = yaml.safe_load(SWEEP_YAML.read_text())
    assert spec["metric"]["name"] == "final/fve_mean"
    known = set(CrosscoderRunnerConfig.__dataclass_fields__)
    assert set(spec["parameters"]) <= known


def test_sweep_parameters_reach_the_run_config(tiny_gemma2_pair, text_jsonl, tmp_path, monkeypatch):
    spec = yaml.safe_load(SWEEP_YAML.read_text())
    drawn = draw(spec["parameters"])
    # what `wandb agent` does before starting the program
    param_file = tmp_path / "wandb" / "sweep-abc" / "config-run1.yaml"
    param_file.parent.mkdir(parents=True)
    config_util.save_config_file_from_dict(str(param_file), {k: {"value": v} for k, v in drawn.items()})
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    monkeypatch.setenv("WANDB_RUN_ID", "run1")
    runs = tmp_path / "runs"
    args = program_args(spec) + tiny_overrides(tiny_gemma2_pair, text_jsonl)
    args = [a if a != "runs/sweeps" else str(runs) for a in args]

    assert sweep.main(args) == 0

    out = runs / "run1"
    run_cfg = json.loads((out / "runner_cfg.json").read_text())
    for key, value in drawn.items():
        assert run_cfg[key] == pytest.approx(value), key
    # the base config and its overrides still hold where the sweep did not draw
    assert run_cfg["model_names"] == tiny_gemma2_pair.names
    assert run_cfg["wandb_project"] == "gemma2-model-diffing-sweeps"
    assert run_cfg["log_to_wandb"] is True and run_cfg["output_path"] == str(out)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["n_training_tokens"] == 256 * 20
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_unknown_sweep_parameter_fails_with_the_key(tiny_gemma2_pair, text_jsonl, tmp_path, monkeypatch, capsys):
    param_file = tmp_path / "params.yaml"
    config_util.save_config_file_from_dict(str(param_file), {"learning_rate": {"value": 1e-3}})
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
    args = ["--preset", "gemma2-9b-pt-vs-simpo", *tiny_overrides(tiny_gemma2_pair, text_jsonl), "--runs-dir", str(tmp_path)]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'learning_rate'" in err
