"""Max-activating examples and activation-quantile samples, collected in the analysis pass.

Per tracked latent, two fixed-size tables are kept up to date batch by batch:
- the top n activations (score = activation);
- a uniform sample of its firing tokens (score = a random key; keeping the largest keys is
  a reservoir sample without replacement). Sorting that sample by activation and cutting it
  into equal groups gives samples from the activation quantiles.
Each entry carries the context window (token ids and the latent's activation per token),
cut from the batch when the entry is selected, so no second pass is needed.

`examples.jsonl` holds one object per latent:
  {"latent": int,
   "top": [example, ...],                       # descending value
   "quantiles": [{"low": float, "high": float, "examples": [example, ...]}, ...]}  # ascending
with example = {"tokens": [str], "acts": [float], "center": int, "value": float,
                "sequence": int, "position": int}; tokens[center] is the example's token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_lens_crosscoder.analysis.sources import SourceBatch

EXAMPLES_FILE = "examples.jsonl"
PAYLOAD_KEYS = ("value", "sequence", "position", "acts", "tokens", "present")


class PerLatentTopK:
    """For each slot (a tracked latent), the k entries with the largest scores so far,
    sorted descending, with payload tensors."""

    def __init__(self, n_slots: int, k: int, window: int) -> None:
        self.k, self.width = k, 2 * window + 1
        self.scores = torch.full((n_slots, k), -torch.inf)
        self.payload = {
            "value": torch.zeros(n_slots, k),
            "sequence": torch.full((n_slots, k), -1, dtype=torch.long),
            "position": torch.full((n_slots, k), -1, dtype=torch.long),
            "acts": torch.zeros(n_slots, k, self.width),
            "tokens": torch.full((n_slots, k, self.width), -1, dtype=torch.long),
            "present": torch.zeros(n_slots, k, self.width, dtype=torch.bool),
        }

    def update(
        self,
        slots: torch.Tensor,
        scores: torch.Tensor,
        make_payload: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    ) -> None:
        """slots/scores: candidate entries; make_payload(index into them) builds payloads
        for the candidates that survive."""
        if self.k == 0 or slots.numel() == 0:
            return
        beats = scores > self.scores[slots, -1]
        cand = beats.nonzero(as_tuple=True)[0]
        if cand.numel() == 0:
            return
        # keep at most k candidates per slot: order by slot, then score descending
        order = torch.argsort(scores[cand], descending=True, stable=True)
        order = order[torch.argsort(slots[cand][order], stable=True)]
        cand = cand[order]
        cand_slots = slots[cand]
        first = torch.searchsorted(cand_slots, cand_slots, side="left")
        rank = torch.arange(cand.numel()) - first
        keep = rank < self.k
        cand, cand_slots, rank = cand[keep], cand_slots[keep], rank[keep]
        payload = make_payload(cand)
        uniq, inverse = torch.unique_consecutive(cand_slots, return_inverse=True)
        new_scores = torch.full((uniq.numel(), self.k), -torch.inf)
        new_scores[inverse, rank] = scores[cand].float()
        merged = torch.cat([self.scores[uniq], new_scores], dim=1).topk(self.k, dim=1)
        self.scores[uniq] = merged.values
        for key, table in self.payload.items():
            fresh = torch.zeros((uniq.numel(), self.k, *table.shape[2:]), dtype=table.dtype)
            fresh[inverse, rank] = payload[key].to(table.dtype)
            both = torch.cat([table[uniq], fresh], dim=1)
            index = merged.indices.view(*merged.indices.shape, *([1] * (table.ndim - 2))).expand(
                -1, -1, *table.shape[2:]
            )
            table[uniq] = both.gather(1, index)

    def filled(self, slot: int) -> int:
        return int(torch.isfinite(self.scores[slot]).sum())


def window_payload(
    batch: SourceBatch, feature_acts: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, window: int
) -> dict[str, torch.Tensor]:
    """Context windows of (row, latent) pairs: slot w + (p' - p) holds the row at position p'
    of the same sequence, for |p' - p| <= w."""
    n_rows = batch.acts.shape[0]
    offsets = torch.arange(-window, window + 1)
    neighbours = rows[:, None] + offsets[None, :]
    inside = (neighbours >= 0) & (neighbours < n_rows)
    nb = neighbours.clamp(0, n_rows - 1)
    same = inside & (batch.sequence[nb] == batch.sequence[rows][:, None])
    slot = batch.position[nb] - batch.position[rows][:, None] + window
    same &= (slot >= 0) & (slot <= 2 * window)
    acts_nb = feature_acts[nb.to(feature_acts.device), cols[:, None].to(feature_acts.device)].float().cpu()
    acts_nb = acts_nb * batch.valid[nb]
    width = 2 * window + 1
    i, j = same.nonzero(as_tuple=True)
    acts = torch.zeros(rows.numel(), width)
    tokens = torch.full((rows.numel(), width), -1, dtype=torch.long)
    present = torch.zeros(rows.numel(), width, dtype=torch.bool)
    acts[i, slot[i, j]] = acts_nb[i, j]
    tokens[i, slot[i, j]] = batch.tokens[nb[i, j]]
    present[i, slot[i, j]] = True
    return {
        "value": feature_acts[rows.to(feature_acts.device), cols.to(feature_acts.device)].float().cpu(),
        "sequence": batch.sequence[rows],
        "position": batch.position[rows],
        "acts": acts,
        "tokens": tokens,
        "present": present,
    }


class ExampleCollector:
    """Top-n and quantile samples for the chosen latents, updated from each batch's non-zeros."""

    def __init__(
        self,
        n_latents: int,
        n_top: int,
        window: int,
        n_quantiles: int,
        per_quantile: int,
        latents: list[int] | None = None,
        seed: int = 0,
    ) -> None:
        self.window, self.n_quantiles, self.per_quantile = window, n_quantiles, per_quantile
        self.latents = torch.arange(n_latents) if latents is None else torch.tensor(sorted(set(latents)), dtype=torch.long)
        self.slot_of = torch.full((n_latents,), -1, dtype=torch.long)
        self.slot_of[self.latents] = torch.arange(self.latents.numel())
        self.top = PerLatentTopK(self.latents.numel(), n_top, window)
        self.sample = PerLatentTopK(self.latents.numel(), n_quantiles * per_quantile, window)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def enabled(self) -> bool:
        return self.latents.numel() > 0 and (self.top.k > 0 or self.sample.k > 0)

    @torch.no_grad()
    def update(
        self, batch: SourceBatch, feature_acts: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor
    ) -> None:
        """rows/cols/vals: the counted non-zeros of feature_acts (on CPU)."""
        if not self.enabled:
            return
        slots = self.slot_of[cols]
        tracked = slots >= 0
        if not bool(tracked.all()):
            rows, cols, vals, slots = rows[tracked], cols[tracked], vals[tracked], slots[tracked]

        def payload(index: torch.Tensor) -> dict[str, torch.Tensor]:
            return window_payload(batch, feature_acts, rows[index], cols[index], self.window)

        self.top.update(slots, vals.float(), payload)
        keys = torch.rand(vals.numel(), generator=self.generator)
        self.sample.update(slots, keys, payload)

    # ---- output -------------------------------------------------------------------------
    def records(
        self, decode: Callable[[list[int]], list[str]], context_tokens: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> Iterator[dict[str, Any]]:
        """One record per tracked latent, in latent order (see the module docstring)."""
        self._fill_from_contexts(context_tokens)
        ids = set()
        for table in (self.top, self.sample):
            tok = table.payload["tokens"]
            ids.update(tok[tok >= 0].unique().tolist())
        id_list = sorted(ids)
        strings = dict(zip(id_list, decode(id_list))) if id_list else {}
        for slot, latent in enumerate(self.latents.tolist()):
            top = [self._example(self.top, slot, i, strings) for i in range(self.top.filled(slot))]
            n_sample = self.sample.filled(slot)
            sample = [self._example(self.sample, slot, i, strings) for i in range(n_sample)]
            sample.sort(key=lambda e: e["value"])
            quantiles = []
            for group in np.array_split(np.arange(len(sample)), min(self.n_quantiles, len(sample))) if sample else []:
                examples = [sample[i] for i in group]
                quantiles.append({"low": examples[0]["value"], "high": examples[-1]["value"], "examples": examples})
            yield {"latent": latent, "top": top, "quantiles": quantiles}

    def _fill_from_contexts(self, context_tokens: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """Where the source knows the full context windows (excluded tokens included), take
        the window tokens from there."""
        for table in (self.top, self.sample):
            seq, pos = table.payload["sequence"], table.payload["position"]
            used = torch.isfinite(table.scores)
            if not bool(used.any()):
                continue
            contexts = context_tokens(seq[used])
            if contexts is None:
                continue
            ctx = contexts.shape[1]
            want = pos[used][:, None] + torch.arange(-self.window, self.window + 1)[None, :]
            inside = (want >= 0) & (want < ctx)
            toks = contexts.gather(1, want.clamp(0, ctx - 1))
            table.payload["tokens"][used] = torch.where(inside, toks, torch.full_like(toks, -1))
            table.payload["present"][used] = inside

    @staticmethod
    def _example(table: PerLatentTopK, slot: int, i: int, strings: dict[int, str]) -> dict[str, Any]:
        p = table.payload
        present = p["present"][slot, i]
        idx = present.nonzero(as_tuple=True)[0]
        window = (p["acts"].shape[-1] - 1) // 2
        tokens = p["tokens"][slot, i, idx].tolist()
        return {
            "tokens": [strings.get(t, "") if t >= 0 else "" for t in tokens],
            "acts": [round(a, 6) for a in p["acts"][slot, i, idx].tolist()],
            "center": int((idx < window).sum()),
            "value": float(p["value"][slot, i]),
            "sequence": int(p["sequence"][slot, i]),
            "position": int(p["position"][slot, i]),
        }


def token_decoder(tokenizer: Any) -> Callable[[list[int]], list[str]]:
    """ids -> display strings: the tokenizer's decoding of each id alone, or "[id]"."""
    if tokenizer is None:
        return lambda ids: [f"[{i}]" for i in ids]

    def decode(ids: list[int]) -> list[str]:
        return list(tokenizer.batch_decode([[i] for i in ids]))

    return decode


def write_examples(path: Path, records: Iterator[dict[str, Any]]) -> int:
    n = 0
    with path.open("w") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_examples(path: Path, latents: set[int] | None = None) -> dict[int, dict[str, Any]]:
    """Records of examples.jsonl, optionally only for some latents."""
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    with path.open() as fh:
        for line in fh:
            if latents is not None:
                # records start with {"latent": N, ...; skip others without parsing them
                head = line[: line.find(",")]
                latent = int(head.split(":")[1])
                if latent not in latents:
                    continue
            record = json.loads(line)
            out[int(record["latent"])] = record
    return out
