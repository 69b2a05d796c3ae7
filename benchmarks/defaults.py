"""How well each architecture trains with its defaults, on planted ground truth.

A paired synthetic dataset (16 shared, 6 + 6 model-exclusive features in d_model 32; model 1
five times larger than model 0; true L0 = 2) is cached, and each architecture is trained
through the normal runner with only `architecture`, `d_sae` and `k` set. Reported per
architecture, over seeds: the worst and mean best-match decoder cosine of the planted
features, the share recovered (cosine > 0.9), the share whose relative decoder norm puts
them on the right side (exclusive < 0.1 / > 0.9, shared in [0.3, 0.7]), FVE and L0.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.runner import train
from sae_lens_crosscoder.synthetic import (
    PairedSyntheticSource,
    match_planted,
    planted_paired_features,
    write_synthetic_cache,
)

SCALES = [1.0, 5.0]


def evaluate(arch: str, seed: int, tokens: int, workdir: Path) -> dict[str, float]:
    planted = planted_paired_features(d_model=32, n_shared=16, n_exclusive=6, seed=seed)
    source = PairedSyntheticSource(planted, firing_probability=2 / 28, model_scales=SCALES, seed=seed + 1)
    cache = workdir / f"cache{seed}"
    if not cache.exists():
        write_synthetic_cache(cache, source, 300_000, model_names=["base", "finetuned"])
    extra = {"k": 2} if "topk" in arch else {}
    cfg = CrosscoderRunnerConfig(
        architecture=arch, d_sae=64, cached_activations_path=str(cache), training_tokens=tokens,
        train_batch_size_tokens=1024, output_path=str(workdir / f"{arch}{seed}"), seed=seed, **extra,
    )
    result = train(cfg)
    sae = result.sae
    decoder = sae.W_dec.detach().unflatten(-1, (2, 32))
    match = match_planted(decoder, planted, sae.activation_scaling_factors * torch.tensor(SCALES))
    rel = sae.relative_decoder_norms()[match["latent"]]
    correct = []
    for i, kind in enumerate(planted.kinds):
        r = float(rel[i])
        correct.append(r < 0.1 if kind == "only:0" else r > 0.9 if kind == "only:1" else 0.3 <= r <= 0.7)
    return {
        "cos_min": float(match["cosine"].min()),
        "cos_mean": float(match["cosine"].mean()),
        "recovered": float((match["cosine"] > 0.9).float().mean()),
        "exclusivity_correct": sum(correct) / len(correct),
        "fve": (result.summary["fve_model0"] + result.summary["fve_model1"]) / 2,
        "l0": result.summary["l0"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--architectures", default="crosscoder,topk_crosscoder,batchtopk_crosscoder,jumprelu_crosscoder")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.architectures.split(","):
            runs = [evaluate(arch, seed, args.tokens, Path(tmp)) for seed in range(args.seeds)]
            out[arch] = {key: round(statistics.mean(r[key] for r in runs), 3) for key in runs[0]}
            out[arch]["cos_min"] = round(min(r["cos_min"] for r in runs), 3)
            print(arch, json.dumps(out[arch]), flush=True)
    out["setup"] = {"seeds": args.seeds, "training_tokens": args.tokens, "d_sae": 64, "true_l0": 2}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
