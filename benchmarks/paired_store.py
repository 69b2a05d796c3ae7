"""Throughput of the paired activation store against the raw limit of its model forwards.

Two random Gemma-2-architecture models (built offline, like the tests' pair but larger:
d_model 256, 4 layers, context 128) read a local text dataset through the live store, hooked
at blocks.1.hook_resid_post (so each forward stops after 2 of 4 blocks). Each round:

- store: serve training batches for a fixed number of shuffle windows, which tokenises, packs,
  runs both models, drops excluded tokens and shuffles;
- raw: the same models' forward passes to the hook layer (``run_with_cache`` with the same
  ``stop_at_layer``) on exactly the token batches the store ran in that round, nothing else.

Rounds are interleaved in one process so machine load affects both alike. Both rates count
tokens run through the models per second; `ratio` is the median over rounds of
raw time / store time for the same batches. `served_tokens_per_s` is what training receives
(excluded tokens removed). Peak memory is the process's maximum resident set size (and the
CUDA peak on a GPU).

Prints one JSON object on its last line with keys store_tokens_per_s, raw_tokens_per_s, ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_gemma2, build_tokenizer, document  # noqa: E402

from sae_lens_crosscoder.config import CrosscoderRunnerConfig  # noqa: E402
from sae_lens_crosscoder.paired_store import PairedActivationsStore  # noqa: E402


def build_pair(root: Path, hidden: int, layers: int) -> list[str]:
    build_tokenizer(root / "tok", vocab_size=1000)
    base = build_gemma2(root / "base", root / "tok", hidden=hidden, n_layers=layers, seed=0)
    finetune = build_gemma2(root / "finetune", root / "tok", hidden=hidden, n_layers=layers, seed=1, perturb_from=base)
    return [str(base), str(finetune)]


def write_dataset(path: Path, n_docs: int) -> Path:
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": document(rng)}) + "\n" for _ in range(n_docs)))
    return path


@torch.inference_mode()
def raw_forwards(store: PairedActivationsStore, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for tokens in batches:
        for model, hook, stop in zip(store.models, store.hook_names, store._stops):
            _, cache = model.run_with_cache(
                tokens.to(model.cfg.device), names_filter=[hook], stop_at_layer=stop, return_cache_object=False
            )
            cache[hook].to(store.device)
    if store.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=16, help="store_batch_size_prompts")
    parser.add_argument("--batch", type=int, default=1024, help="train_batch_size_tokens")
    parser.add_argument("--window", type=int, default=8192, help="shuffle window (tokens)")
    parser.add_argument("--windows-per-round", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # one thread by default: on a shared 2-core machine, 2 threads made every forward spin
    # on a busy neighbour (5x slower, per-round ratios from 0.8 to 2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = build_pair(root, args.d_model, args.layers)
        data = write_dataset(root / "web.jsonl", 4000)
        cfg = CrosscoderRunnerConfig(
            d_sae=1024,
            model_names=names,
            hook_name="blocks.1.hook_resid_post",
            dataset_path=str(data),
            context_size=args.context,
            store_batch_size_prompts=args.prompts,
            train_batch_size_tokens=args.batch,
            training_tokens=args.batch * 1000,
            cache_shuffle_buffer_tokens=args.window,
            cache_chunk_tokens=min(args.window, 8192),
            device=args.device,
        )
        store = PairedActivationsStore.from_config(cfg)
        block_tokens = args.prompts * args.context
        # the store starts at the beginning of the data, so its forward batches are these
        token_batches = iter(store.iter_token_batches(batch_size=args.prompts))
        next(store)  # warm-up: first window, allocator, kernels
        blocks_done = store.n_tokens_forward // block_tokens
        for _ in range(blocks_done):
            next(token_batches)
        raw_forwards(store, [next(iter(store.iter_token_batches(batch_size=args.prompts)))])

        batches_per_round = args.windows_per_round * args.window // args.batch
        store_times, raw_times, forwarded, served = [], [], [], []
        for _ in range(args.rounds):
            before, start = store.n_tokens_forward, time.perf_counter()
            for _ in range(batches_per_round):
                next(store)
            if store.device.type == "cuda":
                torch.cuda.synchronize()
            store_times.append(time.perf_counter() - start)
            n_blocks = (store.n_tokens_forward - before) // block_tokens
            same = [next(token_batches) for _ in range(n_blocks)]
            raw_times.append(raw_forwards(store, same))
            forwarded.append(n_blocks * block_tokens)
            served.append(batches_per_round * args.batch)

    store_rates = [f / t for f, t in zip(forwarded, store_times)]
    raw_rates = [f / t for f, t in zip(forwarded, raw_times)]
    ratios = [r / s for s, r in zip(store_times, raw_times)]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "store_tokens_per_s": round(statistics.median(store_rates), 1),
        "raw_tokens_per_s": round(statistics.median(raw_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        # over all rounds: a round's rows may come from the previous round's forwards
        "served_tokens_per_s": round(sum(served) / sum(store_times), 1),
        "served_fraction": round(sum(served) / sum(forwarded), 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "shape": {
            "n_models": 2,
            "d_model": args.d_model,
            "layers": args.layers,
            "hook": "blocks.1.hook_resid_post",
            "context": args.context,
            "prompts_per_forward": args.prompts,
            "device": args.device,
            "threads": args.threads,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
