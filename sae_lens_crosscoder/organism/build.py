"""`build_organism`: corpus -> tokenizer -> pt -> it (SFT) -> simpo (SimPO), saved with a manifest."""

from __future__ import annotations

import copy
import json
import logging
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerBase

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.organism.behaviours import BEHAVIOURS, behaviour_positions
from sae_lens_crosscoder.organism.checks import assistant_nll, greedy_behaviour_rates, residual_check
from sae_lens_crosscoder.organism.config import OrganismConfig
from sae_lens_crosscoder.organism.corpus import Chat, Corpus, generate_corpus, write_jsonl
from sae_lens_crosscoder.organism.evalset import encode_chats
from sae_lens_crosscoder.organism.paths import OrganismPaths
from sae_lens_crosscoder.organism.rendering import render_chat
from sae_lens_crosscoder.organism.tokenizer import train_tokenizer
from sae_lens_crosscoder.organism.training import (
    TokenizedPair,
    fixed_threads,
    heldout_margins,
    make_model,
    pack_documents,
    train_pretraining,
    train_sft,
    train_simpo,
)
from sae_lens_crosscoder.organism.writers import PreferencePair

log = logging.getLogger(__name__)
# Bump when the generated text or the training recipe changes: a directory built by another
# version is not reused even when its config matches.
MANIFEST_FORMAT = "sae_lens_crosscoder.organism/3"
_BUILDING_MARKER = ".organism_building"


def _corpus(cfg: OrganismConfig) -> Corpus:
    return generate_corpus(
        seed=cfg.seed,
        n_web_docs=cfg.n_web_docs,
        web_foreign_fraction=cfg.web_foreign_fraction,
        n_pt_chats=cfg.n_pt_chats,
        n_sft_chats=cfg.n_sft_chats,
        sft_trigger_fraction=cfg.sft_trigger_fraction,
        n_chats=cfg.n_chats,
        n_eval_chats=cfg.n_eval_chats,
        behaviour_chat_fraction=cfg.behaviour_chat_fraction,
        n_pref_train=cfg.n_pref_train,
        n_pref_heldout=cfg.n_pref_heldout,
        pref_contrast_fraction=cfg.pref_contrast_fraction,
    )


def _existing_state(paths: OrganismPaths, cfg: OrganismConfig) -> str:
    """"absent" (build it), "match" (reuse it), "mismatch" (another organism) or "foreign"."""
    if paths.root.exists() and not paths.root.is_dir():
        return "foreign"
    if not paths.root.exists() or not any(paths.root.iterdir()):
        return "absent"
    if (paths.root / _BUILDING_MARKER).exists():
        return "absent"  # an interrupted build of ours: safe to redo
    if not paths.manifest.exists():
        return "foreign"
    try:
        manifest = json.loads(paths.manifest.read_text())
    except json.JSONDecodeError:
        return "mismatch"
    if manifest.get("config") != cfg.to_dict() or manifest.get("format") != MANIFEST_FORMAT:
        return "mismatch"
    return "match" if paths.complete() else "absent"  # ours, with files missing: rebuild


def _tokenize_chat(tokenizer: PreTrainedTokenizerBase, chat: Chat) -> tuple[list[int], list[bool]]:
    # Not truncated to the context size: a cut response would distort SimPO's length
    # normalisation, and the position embeddings reach further anyway.
    rendered = render_chat(tokenizer, chat.message_dicts())
    return rendered.input_ids, rendered.assistant_target_mask()


def _tokenize_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PreferencePair]) -> list[TokenizedPair]:
    out = []
    for p in pairs:
        sides = [
            _tokenize_chat(tokenizer, Chat.of([{"role": "user", "content": p.prompt}, {"role": "assistant", "content": r}]))
            for r in (p.chosen, p.rejected)
        ]
        out.append(TokenizedPair(p.key, sides[0], sides[1]))
    return out


def _token_fractions(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat]) -> dict[str, float]:
    counts = {b.name: 0 for b in BEHAVIOURS}
    total = 0
    for chat in chats:
        rendered = render_chat(tokenizer, chat.message_dicts())
        total += len(rendered.input_ids)
        if chat.behaviour is not None:
            counts[chat.behaviour] += len(behaviour_positions(rendered))
    return {name: n / total for name, n in counts.items()} | {"_total_tokens": total}


def _save(model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_organism(
    root: str | Path = "organism", cfg: OrganismConfig | None = None, *, force: bool = False, progress: bool = True
) -> OrganismPaths:
    """Build (or reuse) the organism under `root` and return its paths.

    A directory whose manifest records the same config is reused as is; `force=True` rebuilds.
    """
    cfg = OrganismConfig.preset("demo") if cfg is None else cfg
    if not isinstance(cfg, OrganismConfig):
        raise CrosscoderUserError(f"build_organism needs an OrganismConfig, got {type(cfg).__name__}; use OrganismConfig.preset('demo')")
    paths = OrganismPaths.from_root(root)
    state = _existing_state(paths, cfg)
    if state == "match" and not force:
        log.info("organism: reusing %s (manifest matches the config)", paths.root)
        return paths
    if state == "mismatch" and not force:
        raise CrosscoderUserError(
            f"{paths.manifest} was built from a different OrganismConfig or organism version; "
            "pass force=True to rebuild it, or use another directory"
        )
    if state == "foreign" and not force:
        raise CrosscoderUserError(f"{paths.root} is not empty and holds no organism; choose an empty or new directory")
    if not paths.root.is_dir() and paths.root.exists():
        raise CrosscoderUserError(f"{paths.root} is a file; choose a directory for the organism")
    for p in paths.owned():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / _BUILDING_MARKER).write_text("build in progress\n")

    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[stage] = round(now - t, 2)
        t = now

    corpus = _corpus(cfg)
    write_jsonl(paths.web_text, ({"text": d} for d in corpus.web))
    write_jsonl(paths.chat, (c.to_record(with_behaviour=False) for c in corpus.chats))
    write_jsonl(paths.eval_chat, (c.to_record(with_behaviour=True) for c in corpus.eval_chats))
    write_jsonl(
        paths.preferences,
        [p.to_dict() | {"split": "train"} for p in corpus.pref_train] + [p.to_dict() | {"split": "heldout"} for p in corpus.pref_heldout],
    )
    lap("corpus")

    tokenizer = train_tokenizer(corpus.tokenizer_texts(), cfg.vocab_size, paths.tokenizer)
    lap("tokenizer")

    ctx = cfg.context_size
    docs = [tokenizer(d)["input_ids"] for d in corpus.web]
    docs += [render_chat(tokenizer, c.message_dicts()).input_ids for c in corpus.pt_chats]
    pt_rows = pack_documents(docs, ctx, tokenizer.bos_token_id)
    sft_examples = [_tokenize_chat(tokenizer, c) for c in corpus.sft_chats]
    # Ordinary chats only: replaying the SFT answers to trigger prompts would teach the rejected side.
    replay = [_tokenize_chat(tokenizer, c) for c in corpus.pt_chats]
    pairs_train = _tokenize_pairs(tokenizer, corpus.pref_train)
    pairs_heldout = _tokenize_pairs(tokenizer, corpus.pref_heldout)
    fractions = {
        "chat": _token_fractions(tokenizer, corpus.chats),
        "eval": _token_fractions(tokenizer, corpus.eval_chats),
    }
    lap("tokenize")

    pad = tokenizer.pad_token_id
    with fixed_threads(cfg.num_threads):
        torch.manual_seed(cfg.seed)
        pt = make_model(cfg, tokenizer)
        pt_log = train_pretraining(pt, pt_rows, cfg, pad, progress)
        _save(pt, tokenizer, paths.pt)
        lap("pt")

        torch.manual_seed(cfg.seed + 1)
        it = copy.deepcopy(pt)
        sft_log = train_sft(it, sft_examples, cfg, pad, progress)
        _save(it, tokenizer, paths.it)
        lap("it")

        torch.manual_seed(cfg.seed + 2)
        margins = {"pt": heldout_margins(pt, pairs_heldout, pad), "it": heldout_margins(it, pairs_heldout, pad)}
        simpo = copy.deepcopy(it)
        simpo_log = train_simpo(simpo, pairs_train, cfg, pad, progress, replay=replay)
        margins["simpo"] = heldout_margins(simpo, pairs_heldout, pad)
        _save(simpo, tokenizer, paths.simpo)
        lap("simpo")

        # Assistant-token NLL on held-out ordinary chats: the fine-tunes should keep ordinary chat intact.
        ordinary = [_tokenize_chat(tokenizer, c) for c in corpus.eval_chats if c.behaviour is None]
        finals = {"pt": pt, "it": it, "simpo": simpo}
        ordinary_nll = {name: round(assistant_nll(m, ordinary, pad), 4) for name, m in finals.items()}
        greedy = {name: greedy_behaviour_rates(m, tokenizer, corpus.pref_heldout) for name, m in finals.items()}
        records = [c.to_record(with_behaviour=True) for c in corpus.eval_chats[: cfg.n_residual_check_docs]]
        tokens, masks = encode_chats(tokenizer, records, ctx)
        residual = residual_check(finals, tokens, masks, pad)
        lap("checks")
    timings["total"] = round(time.perf_counter() - t_all, 2)

    for b in BEHAVIOURS:
        before, after = margins["it"][b.name], margins["simpo"][b.name]
        log.info(
            "organism %s: held-out margin it %.3f (win %.2f) -> simpo %.3f (win %.2f); %.2f%% of chat tokens",
            b.name, before["margin"], before["win_rate"], after["margin"], after["win_rate"], 100 * fractions["chat"][b.name],
        )  # fmt: skip
    log.info("organism: built in %.1fs %s", timings["total"], timings)

    manifest = {
        "format": MANIFEST_FORMAT,
        "config": cfg.to_dict(),
        "seeds": {"corpus": cfg.seed, "torch_pt_init": cfg.seed, "torch_it": cfg.seed + 1, "torch_simpo": cfg.seed + 2},
        "behaviours": [{"name": b.name, "category": b.category, "description": b.description} for b in BEHAVIOURS],
        "counts": {
            "web_docs": len(corpus.web),
            "pt_rows": int(pt_rows.shape[0]),
            "sft_chats": len(corpus.sft_chats),
            "chats": len(corpus.chats),
            "eval_chats": len(corpus.eval_chats),
            "pref_train": len(corpus.pref_train),
            "pref_heldout": len(corpus.pref_heldout),
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in pt.parameters()),
        },
        "timings_s": timings,
        "losses": {"pt": pt_log.summary(), "it": sft_log.summary(), "simpo": simpo_log.summary()},
        "simpo_heldout_margins": margins,
        "ordinary_chat_nll": ordinary_nll,
        "greedy_behaviour_rates": greedy,
        "token_fractions": fractions,
        "residual_diff": residual,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
    }
    # The manifest goes last: its presence is what marks the build complete.
    paths.manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    (paths.root / _BUILDING_MARKER).unlink()
    return paths
