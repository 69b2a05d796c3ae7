"""Max-activating examples and quantile samples equal a brute-force scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from analysis_helpers import random_crosscoder, write_sequence_cache
from sae_lens_crosscoder.analysis import AnalysisConfig, analyze
from sae_lens_crosscoder.analysis.examples import PerLatentTopK

WINDOW, N_TOP = 3, 4


def make_data(seed: int = 0, n_seq: int = 30, ctx: int = 10, d_model: int = 6):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n_seq, ctx, 2, d_model, generator=gen) * torch.tensor([1.0, 3.0])[None, None, :, None]
    tokens = torch.randint(5, 60, (n_seq, ctx), generator=gen)
    tokens[:, 0] = 1  # BOS: in the contexts, excluded from the rows
    included = torch.ones(n_seq, ctx, dtype=torch.bool)
    included[:, 0] = False
    included[::7, 5] = False  # an excluded token in the middle of some windows
    return acts, tokens, included


def brute_force(cc, acts, tokens, included, rows_meta, by_shard: bool):
    """Top-N per latent by scanning every row; windows from the full contexts (or, by_shard,
    from the neighbouring rows of the same shard)."""
    seq_idx, pos_idx = rows_meta["sequence"], rows_meta["position"]
    with torch.no_grad():
        f = cc.encode(acts[seq_idx, pos_idx])  # [rows, d_sae]
    f_grid = torch.zeros(*tokens.shape, f.shape[1])
    f_grid[seq_idx, pos_idx] = f
    expected = {}
    for j in range(f.shape[1]):
        firing = (f[:, j] > 0).nonzero(as_tuple=True)[0]
        order = firing[torch.argsort(f[firing, j], descending=True)][:N_TOP]
        examples = []
        for r in order.tolist():
            if by_shard:
                shard = rows_meta["shard"]
                lo = max(0, r - WINDOW)
                hi = min(len(seq_idx), r + WINDOW + 1)
                nb = [n for n in range(lo, hi) if shard[n] == shard[r]]
                toks = [f"[{int(tokens[seq_idx[n], pos_idx[n]])}]" for n in nb]
                window_acts = [float(f[n, j]) for n in nb]
                center = nb.index(r)
            else:
                s, p = int(seq_idx[r]), int(pos_idx[r])
                lo, hi = max(0, p - WINDOW), min(tokens.shape[1], p + WINDOW + 1)
                toks = [f"[{int(t)}]" for t in tokens[s, lo:hi]]
                window_acts = [float(f_grid[s, q, j]) for q in range(lo, hi)]
                center = p - lo
            examples.append({"value": float(f[r, j]), "tokens": toks, "acts": window_acts, "center": center, "row": r})
        expected[j] = {"top": examples, "count": firing.numel(), "values": f[firing, j]}
    return expected, f


def check_against(records: dict[int, dict], expected: dict, rows_meta, by_shard: bool) -> int:
    n_checked = 0
    for j, want in expected.items():
        got = records[j]["top"]
        assert len(got) == len(want["top"])
        for g, w in zip(got, want["top"]):
            assert g["value"] == pytest.approx(w["value"], rel=1e-5)
            assert g["tokens"] == w["tokens"]
            assert g["center"] == w["center"]
            assert g["acts"] == pytest.approx(w["acts"], rel=1e-5, abs=1e-6)
            if not by_shard:
                assert (g["sequence"], g["position"]) == (int(rows_meta["sequence"][w["row"]]), int(rows_meta["position"][w["row"]]))
            n_checked += 1
    return n_checked


def read_records(out: Path) -> dict[int, dict]:
    return {r["latent"]: r for r in map(json.loads, (out / "examples.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("batch_tokens", [13, 64])
def test_top_examples_equal_brute_force_with_sequences(tmp_path: Path, batch_tokens: int) -> None:
    acts, tokens, included = make_data()
    rows_meta = write_sequence_cache(tmp_path / "cache", acts, tokens, included, shard_tokens=50)
    cc = random_crosscoder(d_model=6, d_sae=8, seed=1, scaling=[0.7, 0.25])
    cfg = AnalysisConfig(batch_tokens=batch_tokens, window=WINDOW, n_top_examples=N_TOP, n_quantiles=3,
                         examples_per_quantile=2, progress=False)
    analyze(cc, tmp_path / "out", cfg, activations=tmp_path / "cache", make_report=False)
    expected, f = brute_force(cc, acts, tokens, included, rows_meta, by_shard=False)
    records = read_records(tmp_path / "out")
    assert sorted(records) == list(range(8))
    # batches of 13 rows and shards of 50 cut through windows: the halo must fill them
    assert check_against(records, expected, rows_meta, by_shard=False) >= 20
    # a window over an excluded token (position 5 of every 7th sequence) shows it with act 0
    excluded_shown = [
        e for r in records.values() for e in r["top"]
        if e["sequence"] % 7 == 0 and abs(e["position"] - 5) <= WINDOW and e["position"] != 5
    ]
    for e in excluded_shown:
        assert e["acts"][e["center"] + 5 - e["position"]] == 0.0

    # quantile samples: distinct firing tokens of the latent, with their true activation
    grid = {}
    for r in range(f.shape[0]):
        grid[(int(rows_meta["sequence"][r]), int(rows_meta["position"][r]))] = f[r]
    for j, record in records.items():
        samples = [e for q in record["quantiles"] for e in q["examples"]]
        assert len(samples) == min(6, expected[j]["count"])
        keys = {(e["sequence"], e["position"]) for e in samples}
        assert len(keys) == len(samples)
        for q in record["quantiles"]:
            for e in q["examples"]:
                assert e["value"] == pytest.approx(float(grid[(e["sequence"], e["position"])][j]), rel=1e-5)
                assert q["low"] <= e["value"] <= q["high"]
        lows = [q["low"] for q in record["quantiles"]]
        assert lows == sorted(lows)


def test_top_examples_fall_back_to_shard_neighbours(tmp_path: Path) -> None:
    acts, tokens, included = make_data(seed=3)
    rows_meta = write_sequence_cache(
        tmp_path / "cache", acts, tokens, included, shard_tokens=40, with_sequences=False, with_contexts=False
    )
    cc = random_crosscoder(d_model=6, d_sae=8, seed=2)
    cfg = AnalysisConfig(batch_tokens=17, window=WINDOW, n_top_examples=N_TOP, progress=False)
    analyze(cc, tmp_path / "out", cfg, activations=tmp_path / "cache", make_report=False)
    expected, _ = brute_force(cc, acts, tokens, included, rows_meta, by_shard=True)
    assert check_against(read_records(tmp_path / "out"), expected, rows_meta, by_shard=True) >= 20


def test_chosen_latents_only(tmp_path: Path) -> None:
    acts, tokens, included = make_data(seed=4)
    write_sequence_cache(tmp_path / "cache", acts, tokens, included, shard_tokens=100)
    cc = random_crosscoder(d_model=6, d_sae=8, seed=3)
    cfg = AnalysisConfig(window=WINDOW, n_top_examples=N_TOP, example_latents=[5, 2], progress=False)
    analyze(cc, tmp_path / "out", cfg, activations=tmp_path / "cache", make_report=False)
    assert sorted(read_records(tmp_path / "out")) == [2, 5]


def test_per_latent_topk_streams_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    n_slots, k = 7, 5
    table = PerLatentTopK(n_slots, k, window=0)
    all_slots, all_scores = [], []
    for _ in range(12):
        slots = torch.randint(0, n_slots, (40,), generator=gen)
        scores = torch.rand(40, generator=gen)
        table.update(slots, scores, lambda idx, s=scores: {
            "value": s[idx], "sequence": idx, "position": idx,
            "acts": torch.zeros(idx.numel(), 1), "tokens": torch.zeros(idx.numel(), 1, dtype=torch.long),
            "present": torch.ones(idx.numel(), 1, dtype=torch.bool),
        })
        all_slots.append(slots)
        all_scores.append(scores)
    slots, scores = torch.cat(all_slots), torch.cat(all_scores)
    for s in range(n_slots):
        want = scores[slots == s].sort(descending=True).values[:k]
        torch.testing.assert_close(table.scores[s, : want.numel()], want)
        torch.testing.assert_close(table.payload["value"][s, : want.numel()], want)
