"""Training-step throughput of each crosscoder against SAELens's own standard SAE.

Both are stepped by SAELens's trainer on the same flat [batch, n_models * d_model] input with
the same d_sae, interleaved round by round in one process so machine load affects both
alike; the ratio is the median over rounds of (crosscoder step time / SAE step time).
10 % of latents are marked dead so AuxK is part of the TopK-family steps, as in real runs.

Prints one JSON object on its last line:
{"crosscoder": {"tokens_per_s": ..., "ratio_to_sae": ...}, ..., "sae": {...}, "shape": {...}}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from sae_lens import TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_crosscoder.architectures import ARCHITECTURES
from sae_lens_crosscoder.trainer import CrosscoderTrainer


def make_trainer(sae: TrainingSAE, batch: int, crosscoder: bool) -> SAETrainer:
    cfg = SAETrainerConfig(total_training_samples=batch * 10_000, train_batch_size_samples=batch, lr=1e-4, lr_end=1e-5)
    data = iter(())
    trainer = CrosscoderTrainer(cfg, sae, data, runner_cfg={}) if crosscoder else SAETrainer(cfg, sae, data)
    n_dead = sae.cfg.d_sae // 10
    trainer.n_forward_passes_since_fired[:n_dead] = cfg.dead_feature_window + 1
    return trainer


def timed_step(trainer: SAETrainer, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    trainer.step(batch)
    trainer.n_training_steps += 1
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-models", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_in = args.d_model * args.n_models
    batch = torch.randn(args.batch, d_in)

    sae = TrainingSAE.from_dict(StandardTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, l1_coefficient=1.0).to_dict())
    trainers: dict[str, SAETrainer] = {"sae": make_trainer(sae, args.batch, crosscoder=False)}
    for name, (_, _, _, cfg_cls) in ARCHITECTURES.items():
        kw = {"d_in": d_in, "d_sae": args.d_sae, "n_models": args.n_models}
        if "topk" in name:
            kw["k"] = args.k
        trainers[name] = make_trainer(TrainingSAE.from_dict(cfg_cls(**kw).to_dict()), args.batch, crosscoder=True)

    for trainer in trainers.values():  # warm-up: allocator, threads, Adam state
        timed_step(trainer, batch)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            times[name].append(timed_step(trainer, batch))

    result: dict[str, dict[str, float] | dict[str, int]] = {}
    for name, samples in times.items():
        entry = {"tokens_per_s": round(args.batch / statistics.median(samples), 1)}
        if name != "sae":
            ratios = [t / s for t, s in zip(samples, times["sae"])]
            entry["ratio_to_sae"] = round(statistics.median(ratios), 3)
        result[name] = entry
    result["shape"] = {"d_model": args.d_model, "n_models": args.n_models, "d_sae": args.d_sae,
                       "batch": args.batch, "k": args.k, "threads": args.threads}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
