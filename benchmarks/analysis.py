"""Throughput of the analysis pass against a bare crosscoder forward on the same tokens.

Writes a synthetic paired cache, trains a small BatchTopK crosscoder on it, then times
(a) the full analysis pass (cache reading, encode/decode, firing statistics, Latent Scaling
for every latent, per-model metrics, example collection) and (b) a bare forward
(`crosscoder(x)`, i.e. encode + decode) over the same tokens already in memory, in the same
process, alternating the two and reporting the median pair. The inference threshold is set so
that L0 = k, the sparsity training aims at. The last line printed is one JSON object with `analysis_tokens_per_s`,
`forward_tokens_per_s` and `ratio` (target >= 0.5).

    python benchmarks/analysis.py [--n-tokens 262144 --d-model 64 --d-sae 2048 --k 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sae_lens_crosscoder.activation_cache import CachedActivationProvider, open_cache
from sae_lens_crosscoder.analysis import AnalysisConfig, analyze, load_crosscoder
from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.runner import train
from sae_lens_crosscoder.synthetic import PairedSyntheticSource, planted_paired_features, write_synthetic_cache


@torch.no_grad()
def calibrate_threshold(crosscoder: Any, cache_path: Path, k: float) -> None:
    """Set the BatchTopK inference threshold so that L0 = k on the cache's first tokens. A
    short training run leaves the EMA threshold far from its final value, and the analysis's
    cost depends on how sparse the latents are, so measure at the sparsity training targets."""
    reader = CachedActivationProvider(open_cache(cache_path), batch_size=8192, shuffle_chunks=False)
    x = next(reader)
    scores = crosscoder.ranking_scores(crosscoder.pre_activations(x).relu()).flatten()
    n_keep = int(k * x.shape[0])
    crosscoder.threshold.fill_(float(scores.topk(n_keep + 1).values[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=262_144)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=float, default=32)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5, help="alternating timings; the median pair is reported")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        features = planted_paired_features(d_model=args.d_model, n_shared=96, n_exclusive=16, n_weaker=16, seed=0)
        source = PairedSyntheticSource(features, firing_probability=0.03, noise_std=0.05, seed=0)
        write_synthetic_cache(root / "cache", source, args.n_tokens, shard_tokens=65_536, model_names=["base", "chat"])
        cfg = CrosscoderRunnerConfig(
            architecture="batchtopk_crosscoder",
            d_sae=args.d_sae,
            k=args.k,
            cached_activations_path=str(root / "cache"),
            model_names=["base", "chat"],
            train_batch_size_tokens=4096,
            training_tokens=4096 * args.train_steps,
            output_path=str(root / "cc"),
            n_batches_for_norm_estimate=4,
        )
        train(cfg)
        crosscoder = load_crosscoder(root / "cc")
        calibrate_threshold(crosscoder, root / "cache", args.k)

        # bare forward over the same tokens, already in memory
        cache = open_cache(root / "cache")
        reader = CachedActivationProvider(cache, batch_size=args.batch_tokens, shuffle_chunks=False)
        batches = [next(reader) for _ in range(args.n_tokens // args.batch_tokens)]
        n_forward = sum(b.shape[0] for b in batches)
        with torch.no_grad():
            l0 = float((crosscoder.encode(torch.cat(batches[:4])) != 0).sum(-1).float().mean())

        def bare_forward() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for x in batches:
                    crosscoder(x)
            return n_forward / (time.perf_counter() - start)

        def analysis_pass(out: Path, report: bool) -> tuple[float, float, dict[str, Any]]:
            start = time.perf_counter()
            cfg = AnalysisConfig(batch_tokens=args.batch_tokens, progress=False)
            result = analyze(crosscoder, out, cfg, activations=root / "cache", make_report=report)
            timing = result.summary["timing"]
            return timing["tokens_per_s"], time.perf_counter() - start, result.summary

        # the machine is shared: time the two alternately and keep the median pair, so a
        # busy spell does not land on one side only
        pairs = []
        for i in range(args.repeats):
            forward_tps = bare_forward()
            analysis_tps, _, summary = analysis_pass(root / f"out{i}", report=False)
            pairs.append((analysis_tps / forward_tps, analysis_tps, forward_tps))
        _, total_s, summary = analysis_pass(root / "out_report", report=True)

    pairs.sort()
    ratio, analysis_tps, forward_tps = pairs[len(pairs) // 2]
    print(
        json.dumps(
            {
                "analysis_tokens_per_s": round(analysis_tps, 1),
                "forward_tokens_per_s": round(forward_tps, 1),
                "ratio": round(ratio, 3),
                "ratios": [round(p[0], 3) for p in pairs],
                "analysis_with_outputs_s": round(total_s, 2),
                "n_tokens": summary["n_tokens"],
                "d_model": args.d_model,
                "n_models": 2,
                "d_sae": args.d_sae,
                "l0": round(l0, 2),
                "analysis_l0": round(summary["evals"]["l0"], 2),
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
