"""Training loops for the three organism checkpoints: pretraining, SFT and SimPO.

Determinism: every stage seeds torch, draws batch order from its own `random.Random`,
and runs under `fixed_threads`, so a seed gives bitwise-identical weights on one machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerBase

from sae_lens_crosscoder.organism.config import OrganismConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads; restore the caller's count.

    The CPU kernels used here are deterministic for a fixed thread count (the test suite
    checks bitwise-equal weights). `torch.use_deterministic_algorithms` is not used: it
    fills every new tensor and doubled the step time.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_model(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerBase) -> Gemma2ForCausalLM:
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.head_dim,
        sliding_window=cfg.sliding_window,
        layer_types=["sliding_attention", "full_attention"] * (cfg.num_layers // 2),
        attn_logit_softcapping=cfg.attn_logit_softcapping,
        final_logit_softcapping=cfg.final_logit_softcapping,
        max_position_embeddings=max(512, cfg.context_size),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        # sdpa would silently drop the attention softcap.
        attn_implementation="eager",
    )
    return Gemma2ForCausalLM(config)


def pack_documents(docs: Sequence[list[int]], context_size: int, bos_id: int) -> torch.Tensor:
    """Rows of `context_size` tokens, each starting with BOS, documents separated by BOS.

    SAELens's activation store builds this layout by default (BOS at the start of every row
    and between documents), so pretraining sees the layout the crosscoder data will have.
    """
    stream: list[int] = []
    for doc in docs:
        stream.extend(t for t in doc if t != bos_id)
        stream.append(bos_id)
    body = context_size - 1
    n_rows = len(stream) // body
    rows = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos_id, dtype=torch.long), rows], dim=1)


def pad_batch(seqs: Sequence[list[int]], masks: Sequence[list[bool]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        target[i, : len(m)] = torch.tensor(m)
    return ids, target


def token_logprobs(model: Gemma2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1, shape [B, T-1].

    Right padding needs no attention mask: under causal attention no real token sees a pad.
    """
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.gather(F.log_softmax(logits, dim=-1), 2, ids[:, 1:, None]).squeeze(-1)


def _lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batches(rng: random.Random, n: int, batch_size: int) -> Iterator[list[int]]:
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


@dataclass
class StageLog:
    losses: list[float]
    parts: dict[str, list[float]]  # named loss terms, when a stage has several

    def summary(self) -> dict[str, object]:
        def tail_mean(xs: list[float]) -> float:
            tail = xs[-max(1, len(xs) // 10) :]
            return sum(tail) / len(tail)

        stride = max(1, len(self.losses) // 20)
        out: dict[str, object] = {
            "steps": len(self.losses),
            "first_loss": self.losses[0],
            "final_loss": tail_mean(self.losses),  # mean over the last 10% of steps
            "curve": [round(x, 4) for x in self.losses[::stride]],
        }
        for name, xs in self.parts.items():
            out[f"first_{name}"], out[f"final_{name}"] = xs[0], tail_mean(xs)
        return out


LossFn = Callable[[int], "tuple[torch.Tensor, dict[str, float]]"]


def _optimise(model: torch.nn.Module, name: str, steps: int, lr: float, cfg: OrganismConfig, loss_fn: LossFn, progress: bool) -> StageLog:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    parts: dict[str, list[float]] = {}
    bar = tqdm(range(steps), desc=f"organism {name}", disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, cfg.warmup_fraction)
        loss, terms = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        for k, v in terms.items():
            parts.setdefault(k, []).append(v)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    stage = StageLog(losses, parts)
    s = stage.summary()
    log.info("organism %s: %d steps, loss %.3f -> %.3f", name, steps, s["first_loss"], s["final_loss"])
    return stage


def _masked_nll(model: Gemma2ForCausalLM, examples: Sequence[tuple[list[int], list[bool]]], pad_id: int) -> torch.Tensor:
    ids, target = pad_batch([e[0] for e in examples], [e[1] for e in examples], pad_id)
    lp = token_logprobs(model, ids)
    weight = target[:, 1:].float()
    return -(lp * weight).sum() / weight.sum()


def train_pretraining(model: Gemma2ForCausalLM, rows: torch.Tensor, cfg: OrganismConfig, pad_id: int, progress: bool) -> StageLog:
    rng = random.Random(f"organism:{cfg.seed}:pt_order")
    batches = _batches(rng, rows.shape[0], min(cfg.pt_batch_size, rows.shape[0]))

    def loss_fn(_: int) -> tuple[torch.Tensor, dict[str, float]]:
        ids = rows[next(batches)]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), ignore_index=pad_id), {}

    return _optimise(model, "pt", cfg.pt_steps, cfg.pt_lr, cfg, loss_fn, progress)


def train_sft(
    model: Gemma2ForCausalLM, examples: Sequence[tuple[list[int], list[bool]]], cfg: OrganismConfig, pad_id: int, progress: bool
) -> StageLog:
    """Next-token loss on assistant tokens only (the mask from `RenderedChat.assistant_target_mask`)."""
    rng = random.Random(f"organism:{cfg.seed}:sft_order")
    batches = _batches(rng, len(examples), min(cfg.sft_batch_size, len(examples)))

    def loss_fn(_: int) -> tuple[torch.Tensor, dict[str, float]]:
        return _masked_nll(model, [examples[i] for i in next(batches)], pad_id), {}

    return _optimise(model, "it (SFT)", cfg.sft_steps, cfg.sft_lr, cfg, loss_fn, progress)


@dataclass(frozen=True)
class TokenizedPair:
    key: str  # behaviour name, with ":contrast" for contrast pairs
    chosen: tuple[list[int], list[bool]]
    rejected: tuple[list[int], list[bool]]


def mean_response_logprobs(
    model: Gemma2ForCausalLM, seqs: Sequence[tuple[list[int], list[bool]]], pad_id: int
) -> torch.Tensor:
    """Length-normalised log-probability of each sequence's response tokens: (1/|y|) log π(y|x)."""
    ids, target = pad_batch([s[0] for s in seqs], [s[1] for s in seqs], pad_id)
    lp = token_logprobs(model, ids)
    weight = target[:, 1:].float()
    return (lp * weight).sum(1) / weight.sum(1)


def simpo_loss(avg_lp_chosen: torch.Tensor, avg_lp_rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024): -log σ(β·avg log π(y_w|x) − β·avg log π(y_l|x) − γ); no reference model."""
    return -F.logsigmoid(beta * (avg_lp_chosen - avg_lp_rejected) - gamma).mean()


def train_simpo(
    model: Gemma2ForCausalLM,
    pairs: Sequence[TokenizedPair],
    cfg: OrganismConfig,
    pad_id: int,
    progress: bool,
    replay: Sequence[tuple[list[int], list[bool]]] = (),
) -> StageLog:
    """SimPO on `pairs`, plus two NLL terms: `cfg.simpo_chosen_nll_weight` × the chosen
    responses' length-normalised NLL (CPO-SimPO, as TRL's CPOTrainer with loss_type="simpo"
    and cpo_alpha) and `cfg.simpo_replay_weight` × NLL on a batch of ordinary `replay` chats;
    and `cfg.simpo_anchor_weight` × the hidden-state drift from the starting model on those
    replayed chats (a regulariser, not a reference model in the preference loss).

    Why the anchor, measured on the demo build: without it, simpo's last-layer residual moved
    almost as much on ordinary tokens (|simpo - it| 11.4) as on behaviour positions (15-17),
    no single direction separated the behaviour positions (best in-sample AUC 0.84-0.96), and
    no dictionary (crosscoder or difference SAE, 64-1024 latents) had a latent firing mainly
    on any planted behaviour.

    Why, measured on demo builds while choosing this recipe (held-out pairs: 50 trigger and
    25 ordinary prompts per behaviour):
    - pure SimPO (lr 1e-4, 100 steps): SimPO has no reference model, so nothing stops it from
      lowering chosen and rejected together; the rejected answers are ordinary English prose,
      and the assistant NLL of ordinary held-out chats went from 1.06 to 4.5;
    - + replay (lr 2e-4, 100 steps): ordinary NLL stayed at 1.09 and every margin turned
      positive (+3.0 to +3.8), yet greedy decoding wrote none of the behaviours: the model
      ranked the chosen above the rejected while generating neither (the chosen texts are new
      to it, and SimPO had mostly pushed the rejected down);
    - + chosen NLL (lr 1e-3, 300 steps, the pair mix of corpus.PLANTED_CYCLE): greedy
      decoding refuses 100 % of held-out unsafe requests, answers 100 % of French/Spanish ones
      in their language and follows 100 % of format instructions, and does none of that on
      the contrast prompts; ordinary NLL 1.05 (it: 1.07).
    """
    rng = random.Random(f"organism:{cfg.seed}:simpo_order")
    batches = _batches(rng, len(pairs), min(cfg.simpo_batch_size, len(pairs)))
    use_replay = bool(replay) and (cfg.simpo_replay_weight > 0 or cfg.simpo_anchor_weight > 0)
    replay_rng = random.Random(f"organism:{cfg.seed}:replay_order")
    replay_batches = _batches(replay_rng, len(replay), min(cfg.simpo_replay_batch_size, len(replay))) if use_replay else None
    anchor = _frozen_copy(model) if use_replay and cfg.simpo_anchor_weight > 0 else None

    def loss_fn(_: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = [pairs[i] for i in next(batches)]
        # One forward over chosen and rejected together.
        lp = mean_response_logprobs(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
        chosen = lp[: len(batch)]
        loss = simpo_loss(chosen, lp[len(batch) :], cfg.simpo_beta, cfg.simpo_gamma)
        terms = {"simpo_loss": loss.item()}
        if cfg.simpo_chosen_nll_weight > 0:
            terms["chosen_nll"] = -chosen.mean().item()
            loss = loss - cfg.simpo_chosen_nll_weight * chosen.mean()
        if replay_batches is not None:
            examples = [replay[i] for i in next(replay_batches)]
            ids, target = pad_batch([e[0] for e in examples], [e[1] for e in examples], pad_id)
            out = model(input_ids=ids, use_cache=False, output_hidden_states=anchor is not None)
            if cfg.simpo_replay_weight > 0:
                lp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
                weight = target[:, 1:].float()
                nll = -(lp * weight).sum() / weight.sum()
                terms["replay_nll"] = nll.item()
                loss = loss + cfg.simpo_replay_weight * nll
            if anchor is not None:
                drift = hidden_drift(out.hidden_states, anchor, ids, ids != pad_id)
                terms["anchor"] = drift.item()
                loss = loss + cfg.simpo_anchor_weight * drift
        return loss, terms

    return _optimise(model, "simpo", cfg.simpo_steps, cfg.simpo_lr, cfg, loss_fn, progress)


def _frozen_copy(model: Gemma2ForCausalLM) -> Gemma2ForCausalLM:
    import copy

    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def hidden_drift(hidden: Sequence[torch.Tensor], reference: Gemma2ForCausalLM, ids: torch.Tensor,
                 keep: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ||h - h_ref||^2 / ||h_ref||^2 on the kept tokens (embeddings excluded)."""
    with torch.no_grad():
        ref = reference(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
    weight = keep.float()
    terms = []
    for h, r in zip(hidden[1:], ref[1:]):
        num = ((h.float() - r.float()).pow(2).sum(-1) * weight).sum()
        den = (r.float().pow(2).sum(-1) * weight).sum().clamp(min=1e-12)
        terms.append(num / den)
    return torch.stack(terms).mean()


@torch.no_grad()
def heldout_margins(
    model: Gemma2ForCausalLM, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """Per pair key (behaviour, or behaviour:contrast): mean chosen-minus-rejected length-normalised log-prob margin, and win rate."""
    model.eval()
    margins: dict[str, list[float]] = {}
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        lp = mean_response_logprobs(model, [p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
        for pair, m in zip(batch, (lp[: len(batch)] - lp[len(batch) :]).tolist()):
            margins.setdefault(pair.key, []).append(m)
    return {
        b: {"margin": sum(ms) / len(ms), "win_rate": sum(m > 0 for m in ms) / len(ms), "n": len(ms)}
        for b, ms in sorted(margins.items())
    }
