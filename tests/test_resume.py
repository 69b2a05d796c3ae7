"""Kill a live training run with SIGKILL after a checkpoint; `--resume` must finish it with
the same number of tokens and the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sae_lens_crosscoder import cli
from sae_lens_crosscoder.trainer import DATA_STATE, latest_checkpoint


def run_config(live_config, out: Path, **overrides):
    return live_config(
        training_tokens=64 * 400,
        checkpoint_every_tokens=64 * 40,
        output_path=str(out),
        **overrides,
    )


def start_and_kill_after_checkpoint(config_path: Path, checkpoints: Path, timeout: float = 240) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sae_lens_crosscoder.cli", "train", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while latest_checkpoint(checkpoints) is None:
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.mark.slow
def test_killed_live_run_resumes_to_the_uninterrupted_weights(live_config, tmp_path, capsys):
    killed_out = tmp_path / "killed"
    cfg = run_config(live_config, killed_out)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    start_and_kill_after_checkpoint(config_path, killed_out / "checkpoints")
    assert not (killed_out / "sae_weights.safetensors").exists()
    checkpoint = latest_checkpoint(killed_out / "checkpoints")
    assert checkpoint is not None
    resumed_from = int(checkpoint.name)
    assert 0 < resumed_from < 64 * 400
    assert json.loads((checkpoint / DATA_STATE).read_text())["data"]["served"] > resumed_from  # + norm batches

    assert cli.main(["train", str(config_path), "--resume"]) == 0
    resumed = json.loads((killed_out / "training_summary.json").read_text())
    assert resumed["n_training_tokens"] == 64 * 400 and resumed["n_training_steps"] == 400

    straight_out = tmp_path / "straight"
    straight_path = tmp_path / "straight.yaml"
    straight_path.write_text(yaml.safe_dump(run_config(live_config, straight_out).to_dict()))
    assert cli.main(["train", str(straight_path)]) == 0
    straight = json.loads((straight_out / "training_summary.json").read_text())
    assert straight["n_training_tokens"] == resumed["n_training_tokens"]

    ours = load_file(str(killed_out / "sae_weights.safetensors"))
    theirs = load_file(str(straight_out / "sae_weights.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=0, msg=name)
