"""Rendered chats as token tensors, with the ground-truth behaviour masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.organism.behaviours import BEHAVIOURS, behaviour_positions
from sae_lens_crosscoder.organism.corpus import read_jsonl
from sae_lens_crosscoder.organism.paths import OrganismPaths
from sae_lens_crosscoder.organism.rendering import render_chat
from sae_lens_crosscoder.organism.tokenizer import load_tokenizer


def encode_chats(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[dict[str, Any]], context_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each record ({"messages", "behaviour"}) becomes one row, truncated to `context_size` and
    right-padded with the pad id; the mask of a record's behaviour marks where it acts."""
    tokens = torch.full((len(records), context_size), tokenizer.pad_token_id, dtype=torch.long)
    masks = {b.name: torch.zeros((len(records), context_size), dtype=torch.bool) for b in BEHAVIOURS}
    for row, record in enumerate(records):
        rendered = render_chat(tokenizer, record["messages"])
        ids = rendered.input_ids[:context_size]
        tokens[row, : len(ids)] = torch.tensor(ids)
        behaviour = record.get("behaviour")
        if behaviour is not None:
            if behaviour not in masks:
                raise CrosscoderUserError(f"eval chat {row} names unknown behaviour {behaviour!r}; rebuild the organism")
            for pos in behaviour_positions(rendered):
                if pos < context_size:
                    masks[behaviour][row, pos] = True
    return tokens, masks


def load_eval_set(
    paths: OrganismPaths | str | Path, n_docs: int | None = None, context_size: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Held-out rendered chats [n_docs, context_size] (BOS first, pad-padded) and, per planted
    behaviour, a bool mask of the positions where it acts (see `behaviours.behaviour_positions`).

    Defaults: every eval chat, at the organism's training context size.
    """
    paths = paths if isinstance(paths, OrganismPaths) else OrganismPaths.from_root(paths)
    if not paths.eval_chat.exists():
        raise CrosscoderUserError(f"no organism eval set at {paths.eval_chat}; run build_organism({str(paths.root)!r}) first")
    records = read_jsonl(paths.eval_chat)
    if context_size is None:
        context_size = int(paths.read_manifest()["config"]["context_size"])
    if context_size < 2:
        raise CrosscoderUserError(f"load_eval_set: context_size must be >= 2, got {context_size}")
    if n_docs is None:
        n_docs = len(records)
    if not 1 <= n_docs <= len(records):
        raise CrosscoderUserError(
            f"load_eval_set: n_docs={n_docs} but the organism has {len(records)} eval chats; "
            "ask for fewer or rebuild with a larger n_eval_chats"
        )
    return encode_chats(load_tokenizer(paths.tokenizer), records[:n_docs], context_size)
