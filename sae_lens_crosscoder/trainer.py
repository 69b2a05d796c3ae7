"""`CrosscoderTrainer`: SAELens's `SAETrainer` with crash-safe, resumable checkpoints.

What it adds to SAETrainer:
- checkpoints every N tokens (or SAELens's n_checkpoints), written to a temporary
  directory and renamed into place, with a `latest` pointer updated atomically;
- the data position and the run config saved in each checkpoint, so `--resume` continues
  on exactly the batches the interrupted run would have seen;
- per-model metrics and the relative-decoder-norm histogram, accumulated over the window
  since the last checkpoint, written beside each checkpoint and logged to W&B.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_crosscoder.activation_cache import write_json_atomic
from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.reconstruction import ReconstructionSums

logger = logging.getLogger(__name__)

LATEST = "latest"
DATA_STATE = "data_state.json"
CHECKPOINT_METRICS = "metrics.json"
RUNNER_CFG = "runner_cfg.json"
HISTOGRAM_BINS = 20


class WindowMetrics(ReconstructionSums):
    """Reconstruction sums over the training batches since the last reset (normalised space)."""

    def update_from(self, output: TrainStepOutput) -> None:
        self.update(output.sae_in, output.sae_out, output.feature_acts.detach().bool().sum())

    def summary(self) -> dict[str, float]:
        if self.tokens == 0:
            return {}
        return {"l0": self.l0(), **self.by_model_index()}


def relative_norm_histogram(sae: TrainingSAE[Any]) -> dict[str, list[int]]:
    if not isinstance(sae, CrosscoderMixin):
        return {}
    out = {}
    for m in range(1, sae.n_models):
        rel = sae.relative_decoder_norms(0, m).float().cpu()
        out[f"relative_decoder_norm_0_{m}"] = torch.histc(rel, bins=HISTOGRAM_BINS, min=0.0, max=1.0).long().tolist()
    return out


class CrosscoderTrainer(SAETrainer[Any, Any]):
    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: TrainingSAE[Any],
        data_provider: Any,
        runner_cfg: dict[str, Any],
        checkpoint_every_tokens: int | None = None,
        keep_checkpoints: int = 2,
        extra_checkpoint_state: Callable[[], dict[str, Any]] | None = None,
        checkpoint_evaluator: Callable[..., dict[str, float]] | None = None,
    ) -> None:
        self.window = WindowMetrics(getattr(sae, "n_models", 1))
        super().__init__(cfg, sae, data_provider, evaluator=self._evaluate)
        self.runner_cfg = runner_cfg
        self.keep_checkpoints = keep_checkpoints
        self.extra_checkpoint_state = extra_checkpoint_state
        if checkpoint_every_tokens:
            self.checkpoint_thresholds = list(
                range(checkpoint_every_tokens, cfg.total_training_samples, checkpoint_every_tokens)
            )
        self.checkpoint_evaluator = checkpoint_evaluator

    # ---- metrics -----------------------------------------------------------------------
    def _train_step(self, sae: Any, sae_in: torch.Tensor) -> TrainStepOutput:
        if self.n_training_steps == int(0.9 * self.cfg.total_training_steps):
            # the final summary then describes the last 10 % of training, not its start
            self.window.reset()
        output = super()._train_step(sae, sae_in)
        self.window.update_from(output)
        return output

    def _evaluate(self, sae: Any, data_provider: Any, activation_scaler: Any) -> dict[str, Any]:
        metrics = {f"eval/{k}": v for k, v in self.window.summary().items()}
        metrics["eval/dead_fraction"] = float(self.dead_neurons.float().mean())
        return metrics

    def run_checkpoint_evals(self) -> dict[str, float]:
        """Held-out evals (per-model FVE/MSE/L0, CE/KL with live models); logged to W&B by
        the evaluator itself when enabled."""
        if self.checkpoint_evaluator is None:
            return {}
        return self.checkpoint_evaluator(self.sae, step=self.n_training_steps)

    def window_metrics(self) -> dict[str, Any]:
        return {
            **self.window.summary(),
            "dead_fraction": float(self.dead_neurons.float().mean()),
            "n_training_tokens": self.n_training_samples,
            "n_training_steps": self.n_training_steps,
            "relative_norm_histogram": relative_norm_histogram(self.sae),
            "histogram_bins": HISTOGRAM_BINS,
        }

    # ---- checkpoints -------------------------------------------------------------------
    @torch.no_grad()
    def _checkpoint_if_needed(self) -> None:
        if self.checkpoint_thresholds and self.n_training_samples > self.checkpoint_thresholds[0]:
            # SAETrainer increments the step counter after checkpointing; record the
            # completed-step count so a resumed run continues on the next step
            self.n_training_steps += 1
            try:
                self.save_checkpoint(checkpoint_name=str(self.n_training_samples))
            finally:
                self.n_training_steps -= 1
            while self.checkpoint_thresholds and self.n_training_samples > self.checkpoint_thresholds[0]:
                self.checkpoint_thresholds.pop(0)

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        base = Path(base_path if base_path is not None else self.cfg.checkpoint_path or "checkpoints")
        base.mkdir(parents=True, exist_ok=True)
        final = base / checkpoint_name
        tmp = base / f".{checkpoint_name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        super().save_checkpoint(tmp.name, base_path=base, wandb_aliases=wandb_aliases)
        metrics = self.window_metrics()
        metrics["evals"] = self.run_checkpoint_evals()
        state = {"data": self.data_provider.state_dict() if hasattr(self.data_provider, "state_dict") else None}
        if self.extra_checkpoint_state is not None:
            state.update(self.extra_checkpoint_state())
        (tmp / DATA_STATE).write_text(json.dumps(state, indent=2))
        (tmp / CHECKPOINT_METRICS).write_text(json.dumps(metrics, indent=2))
        (tmp / RUNNER_CFG).write_text(json.dumps(self.runner_cfg, indent=2))
        if final.exists():
            old = base / f".{checkpoint_name}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        write_json_atomic(base / LATEST, {"checkpoint": checkpoint_name, "n_training_tokens": self.n_training_samples})
        self._prune(base, keep=checkpoint_name)
        if self.cfg.logger.log_to_wandb and wandb.run is not None:
            flat = {f"checkpoint/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            for name, counts in metrics["relative_norm_histogram"].items():
                flat[f"checkpoint/{name}"] = wandb.Histogram(np_histogram=(counts, _bin_edges()))
            wandb.log(flat, step=self.n_training_steps)
        self.window.reset()
        logger.info("checkpoint %s written (%d tokens)", final, self.n_training_samples)

    def _prune(self, base: Path, keep: str) -> None:
        if self.keep_checkpoints <= 0:
            return
        numbered = sorted(
            (p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        for old in numbered[: -self.keep_checkpoints]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, checkpoint: Path) -> dict[str, Any]:
        """Restore weights, optimiser, schedulers, counters and data position."""
        self.sae.load_weights_from_checkpoint(checkpoint)
        self.load_trainer_state(checkpoint)
        state = json.loads((checkpoint / DATA_STATE).read_text())
        if state.get("data") is not None and hasattr(self.data_provider, "load_state_dict"):
            self.data_provider.load_state_dict(state["data"])
        # thresholds already passed were written before the interruption
        self.checkpoint_thresholds = [t for t in self.checkpoint_thresholds if t >= self.n_training_samples]
        return state


def _bin_edges() -> list[float]:
    return [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]


def latest_checkpoint(base: Path) -> Path | None:
    pointer = base / LATEST
    if not pointer.is_file():
        return None
    name = json.loads(pointer.read_text())["checkpoint"]
    path = base / name
    return path if path.is_dir() else None
