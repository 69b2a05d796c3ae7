"""Per-model evals at training checkpoints and at the end of a live run: FVE/MSE/L0 and
the CE/KL of each model with its reconstruction spliced in."""

from __future__ import annotations

import json
import math

from sae_lens_crosscoder.runner import train


def test_live_run_records_checkpoint_and_final_evals(live_config, tmp_path):
    cfg = live_config(checkpoint_every_tokens=64 * 20, eval_tokens=256, eval_ce_tokens=128)
    result = train(cfg)
    names = cfg.model_names
    final = result.summary["evals"]
    for name in names:
        for metric in ("fve", "mse", "ce_clean", "ce_spliced", "ce_recovered", "kl_spliced"):
            key = f"eval/{metric}/{name}"
            assert key in final, (key, sorted(final))
        assert final[f"eval/kl_spliced/{name}"] > 0  # a 40-step crosscoder is not a perfect reconstruction
        # random tiny models predict near-uniformly over their 400-token vocabulary
        assert abs(final[f"eval/ce_clean/{name}"] - math.log(400)) < 0.5
    assert "eval/l0" in final and final["eval/l0"] > 0
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("[0-9]*"))[-1]
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    assert metrics["evals"] and set(metrics["evals"]) == set(final)
    assert json.loads((tmp_path / "run" / "training_summary.json").read_text())["evals"] == final
