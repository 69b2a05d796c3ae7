"""Sanity checks on a built organism: does each planted behaviour show, and is it diff-able?

- `residual_check`: mean ||fine-tuned − base|| residual norm on each behaviour's positions
  against all other positions, per layer (HF `output_hidden_states` plus a hook for the
  last block, whose HF hidden state is taken after the final norm).
- `greedy_behaviour_rates`: how often greedy decoding actually writes the behaviour.
  Positive SimPO margins alone do not show that: a model can prefer the chosen response to
  the rejected one while generating neither.
- `assistant_nll`: assistant-token NLL, to check the fine-tunes kept ordinary chat intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerBase

from sae_lens_crosscoder.organism.behaviours import BEHAVIOUR_BY_NAME, MATCH_LANGUAGE, guess_language
from sae_lens_crosscoder.organism.writers import PreferencePair
from sae_lens_crosscoder.organism.training import pad_batch, token_logprobs


@torch.no_grad()
def _residuals(model: Gemma2ForCausalLM, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Residual stream after every block (pre final norm), then the final-norm output."""
    captured: list[torch.Tensor] = []
    last = model.model.layers[-1]
    handle = last.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = model(input_ids=tokens, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    hidden = list(out.hidden_states)
    # hidden_states[0] is the embedding, [1..L-1] block outputs, [L] the final-norm output.
    return hidden[1:-1] + [captured[0], hidden[-1]]


def residual_check(
    models: dict[str, Gemma2ForCausalLM], tokens: torch.Tensor, masks: dict[str, torch.Tensor], pad_id: int
) -> dict[str, Any]:
    """Mean ||fine-tuned − pt|| residual norm on each behaviour's positions vs all other positions.

    A sanity check that the planted behaviours are diff-able at all; the pt norm is given beside it.
    """
    acts = {name: _residuals(m, tokens) for name, m in models.items()}
    n_layers = len(acts["pt"]) - 1
    valid = tokens != pad_id
    any_behaviour = torch.zeros_like(valid)
    for m in masks.values():
        any_behaviour |= m
    groups = {name: m for name, m in masks.items()} | {"other": valid & ~any_behaviour}
    out: dict[str, Any] = {}
    # simpo - it isolates what SimPO added; the crosscoder pairs are pt-simpo and pt-it.
    for ft, base_name in (("it", "pt"), ("simpo", "pt"), ("simpo", "it")):
        per_layer = {}
        for li in range(n_layers + 1):
            key = f"block_{li}" if li < n_layers else "final_norm"
            diff = (acts[ft][li] - acts[base_name][li]).norm(dim=-1)
            base = acts[base_name][li].norm(dim=-1)
            delta = acts[ft][li] - acts[base_name][li]
            # mean_diff_norm = ||mean of the diff vectors||: equal to diff_norm when every
            # position moves the same way, near 0 when the moves cancel.
            per_layer[key] = {
                g: {
                    "diff_norm": round(diff[m].mean().item(), 4),
                    "mean_diff_norm": round(delta[m].mean(0).norm().item(), 4),
                    "base_norm": round(base[m].mean().item(), 4),
                    "n": int(m.sum()),
                }
                for g, m in groups.items()
            }
        out[f"{ft}_minus_{base_name}"] = per_layer
    return out


@torch.no_grad()
def assistant_nll(model: Gemma2ForCausalLM, examples: Sequence[tuple[list[int], list[bool]]], pad_id: int, batch_size: int = 32) -> float:
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        ids, target = pad_batch([e[0] for e in examples[i : i + batch_size]], [e[1] for e in examples[i : i + batch_size]], pad_id)
        weight = target[:, 1:].float()
        total -= (token_logprobs(model, ids) * weight).sum().item()
        count += weight.sum().item()
    return total / count


@torch.no_grad()
def greedy_responses(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy continuations of single-turn chats, cut at the first <end_of_turn>."""
    end_id = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chats = [[{"role": "user", "content": p}] for p in prompts[i : i + batch_size]]
            enc = tokenizer.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True)
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id
            )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                row = row[: row.index(end_id)] if end_id in row else row
                out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = previous_side
    return out


def greedy_behaviour_rates(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PreferencePair], max_new_tokens: int = 16
) -> dict[str, dict[str, float]]:
    """Per behaviour: the fraction of trigger prompts whose greedy response starts the way the
    behaviour's responses start ("planted"; for language, in the request's language), and the
    same fraction on the contrast prompts without the trigger ("contrast"), which should stay
    near 0."""
    responses = greedy_responses(model, tokenizer, [p.prompt for p in pairs], max_new_tokens)
    hits: dict[str, dict[str, list[bool]]] = {}
    for pair, response in zip(pairs, responses):
        if pair.behaviour == MATCH_LANGUAGE and not pair.contrast:
            # A Spanish request answered in French does not count.
            shown = guess_language(response) == pair.detail
        else:
            shown = BEHAVIOUR_BY_NAME[pair.behaviour].starts(response)
        hits.setdefault(pair.behaviour, {"planted": [], "contrast": []})["contrast" if pair.contrast else "planted"].append(shown)
    return {
        b: {kind: round(sum(v) / len(v), 4) if v else None for kind, v in kinds.items()} for b, kinds in sorted(hits.items())
    }
