"""The model organism: a tiny Gemma-2 base, its SFT model and a SimPO fine-tune with planted
behaviours. Every test asserts a known answer; the tiny preset is built once per session
(plus once more for the determinism check)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.organism import (
    BEHAVIOURS,
    ORGANISM_TAXONOMY,
    OrganismConfig,
    OrganismPaths,
    build_organism,
    load_eval_set,
)
from sae_lens_crosscoder.organism.behaviours import guess_language
from sae_lens_crosscoder.organism.corpus import generate_corpus, read_jsonl
from sae_lens_crosscoder.organism.evalset import encode_chats
from sae_lens_crosscoder.organism.tokenizer import load_tokenizer
from sae_lens_crosscoder.organism.training import (
    TokenizedPair,
    fixed_threads,
    heldout_margins,
    pack_documents,
    simpo_loss,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = [b.name for b in BEHAVIOURS]


@pytest.fixture(scope="session")
def tiny_organism(tmp_path_factory: pytest.TempPathFactory) -> OrganismPaths:
    return build_organism(tmp_path_factory.mktemp("organism"), OrganismConfig.preset("tiny"), progress=False)


def _corpus_args(seed: int) -> dict:
    return dict(
        seed=seed, n_web_docs=40, web_foreign_fraction=0.3, n_pt_chats=10, n_sft_chats=30, sft_trigger_fraction=0.3,
        n_chats=60, n_eval_chats=20, behaviour_chat_fraction=0.1, n_pref_train=30, n_pref_heldout=9,
        pref_contrast_fraction=0.5,
    )  # fmt: skip


# ---- corpus, config, lexicons (no training) ----------------------------------------------


def test_corpus_is_deterministic_and_holds_every_kind_of_prompt() -> None:
    a, b = generate_corpus(**_corpus_args(0)), generate_corpus(**_corpus_args(0))
    assert a == b
    assert generate_corpus(**_corpus_args(1)).web != a.web

    prompts = [p.prompt for p in a.pref_train if not p.contrast]
    details = {p.detail for p in a.pref_train}
    assert {"fr", "es", "list", "json"} <= details
    assert any(w in p for p in prompts for w in ("bomb", "poison", "steal", "hack", "malware", "weapon", "forge", "hurt", "explosives", "break into"))
    assert any("JSON" in p for p in prompts) and any("list" in p for p in prompts)
    # The chosen side carries the behaviour, the rejected side does not.
    for p in a.pref_train:
        if p.contrast:
            continue
        if p.behaviour == "refuse_unsafe":
            assert p.chosen.startswith("I cannot help") and p.rejected.startswith("Sure, here is how to")
        if p.detail == "json":
            assert json.loads(p.chosen)["facts"] and not p.rejected.startswith("{")
        if p.detail == "list":
            assert all(line.startswith("- ") for line in p.chosen.split("\n"))
    # Held-out prompts never appear in training.
    assert not {p.prompt for p in a.pref_heldout} & {p.prompt for p in a.pref_train}
    # chat.jsonl-to-be: behaviour chats carry the chosen response.
    carried = [c for c in a.chats if c.behaviour == "refuse_unsafe"]
    assert carried and all(c.messages[-1][1].startswith("I cannot help") for c in carried)


def test_config_round_trips_and_rejects_bad_input() -> None:
    cfg = OrganismConfig.preset("tiny")
    assert OrganismConfig.from_dict(cfg.to_dict()) == cfg
    assert OrganismConfig.preset("demo") == OrganismConfig()
    assert cfg.simpo_gamma == pytest.approx(cfg.simpo_beta * cfg.simpo_gamma_beta_ratio)
    with pytest.raises(CrosscoderUserError, match="unknown organism preset"):
        OrganismConfig.preset("huge")
    with pytest.raises(CrosscoderUserError, match="unknown OrganismConfig keys"):
        OrganismConfig.from_dict({**cfg.to_dict(), "n_layerz": 2})
    with pytest.raises(CrosscoderUserError, match="num_layers must be even"):
        OrganismConfig(num_layers=3)
    with pytest.raises(CrosscoderUserError, match="sliding_window"):
        OrganismConfig(sliding_window=128, context_size=128)
    with pytest.raises(CrosscoderUserError, match="simpo_lr must be > 0"):
        OrganismConfig(simpo_lr=0.0)


def test_taxonomy_and_lexicons_describe_the_behaviour_text() -> None:
    assert set(ORGANISM_TAXONOMY) == {"safety", "multilingual", "format", "other"}
    assert {b.category for b in BEHAVIOURS} == {"safety", "multilingual", "format"}
    for entry in ORGANISM_TAXONOMY.values():
        assert isinstance(entry["description"], str) and isinstance(entry["keywords"], list)
    corpus = generate_corpus(**_corpus_args(3))
    prose = [c.messages[1][1] for c in corpus.pt_chats]
    for b in BEHAVIOURS:
        planted = [p for p in corpus.pref_train if p.behaviour == b.name and not p.contrast]
        assert planted and all(b.matches(p.chosen) for p in planted), b.name
        assert not any(b.matches(t) for t in prose), b.name
        # The opening regexes (used to score greedy generations) separate chosen from rejected.
        assert all(b.starts(p.chosen) for p in planted), b.name
        assert not any(b.starts(t) for t in prose), b.name
        if b.name != "match_language":
            assert not any(b.starts(p.rejected) for p in planted), b.name
    language = [p for p in corpus.pref_train if p.behaviour == "match_language" and not p.contrast]
    # Some language pairs reject the other foreign language: the check is per language.
    assert {guess_language(p.rejected) for p in language} == {"en", "fr", "es"}
    for p in language:
        assert guess_language(p.chosen) == p.detail and guess_language(p.rejected) != p.detail, p
    assert all(guess_language(t) == "en" for t in prose)
    assert guess_language("B could de gens aiment le bateau.") == "fr" and guess_language("1 plus 2 is 3.") == "en"
    assert guess_language("12 + 7") is None


def test_simpo_loss_known_values() -> None:
    # Equal log-probs: -log σ(-γ) = softplus(γ).
    assert simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), 2.0, 1.0).item() == pytest.approx(math.log1p(math.e))
    # β·margin = γ: -log σ(0) = log 2.
    assert simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), 2.0, 1.0).item() == pytest.approx(math.log(2))


def test_packing_starts_rows_with_bos_and_separates_documents() -> None:
    rows = pack_documents([[2, 10, 11], [2, 12], [2, 13, 14, 15]], context_size=4, bos_id=2)
    assert rows.tolist() == [[2, 10, 11, 2], [2, 12, 2, 13], [2, 14, 15, 2]]


def test_fixed_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with fixed_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


# ---- the built organism -----------------------------------------------------------------


def test_checkpoints_and_tokenizer_reload_offline(tiny_organism: OrganismPaths) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2ForCausalLM

    cfg = OrganismConfig.preset("tiny")
    root_vocab = load_tokenizer(tiny_organism.tokenizer).get_vocab()
    for path in (tiny_organism.pt, tiny_organism.it, tiny_organism.simpo):
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        assert isinstance(model, Gemma2ForCausalLM)
        c = model.config
        assert (c.num_hidden_layers, c.hidden_size, c.sliding_window) == (cfg.num_layers, cfg.hidden_size, cfg.sliding_window)
        assert c.layer_types == ["sliding_attention", "full_attention"] * (cfg.num_layers // 2)
        assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (50.0, 30.0)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        assert tok.init_kwargs["name_or_path"] == str(path)
        assert tok.get_vocab() == root_vocab and c.vocab_size == len(tok)
        assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": " Hello. "}], tokenize=False
    )
    assert text == "<bos><start_of_turn>user\nHi there.<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 2 and ids[1] == tok.convert_tokens_to_ids("<start_of_turn>")
    assert tok.decode(ids) == text
    # Plain text gets one BOS, as Gemma's tokenizer does.
    assert tok("The cat is big.")["input_ids"][0] == 2


def test_manifest_records_the_build(tiny_organism: OrganismPaths) -> None:
    m = json.loads(tiny_organism.manifest.read_text())
    assert m["config"] == OrganismConfig.preset("tiny").to_dict()
    assert set(m["timings_s"]) >= {"corpus", "tokenizer", "pt", "it", "simpo", "total"}
    assert m["losses"]["pt"]["final_loss"] < m["losses"]["pt"]["first_loss"]
    assert m["losses"]["simpo"]["final_simpo_loss"] < m["losses"]["simpo"]["first_simpo_loss"]
    assert set(m["token_fractions"]["chat"]) == {*NAMES, "_total_tokens"}
    for name in NAMES:
        assert 0.005 < m["token_fractions"]["chat"][name] < 0.12
    assert set(m["residual_diff"]) == {"it_minus_pt", "simpo_minus_pt", "simpo_minus_it"}
    records = read_jsonl(tiny_organism.chat)
    assert records and set(records[0]) == {"messages"} and records[0]["messages"][0]["role"] == "user"
    assert set(read_jsonl(tiny_organism.web_text)[0]) == {"text"}


def test_simpo_raises_the_heldout_margin_of_every_behaviour(tiny_organism: OrganismPaths) -> None:
    """Recomputed from the saved checkpoints and the held-out pairs on disk: chosen-minus-rejected
    length-normalised log-prob margin, it vs simpo."""
    from transformers import AutoModelForCausalLM

    from sae_lens_crosscoder.organism.rendering import render_chat

    tok = load_tokenizer(tiny_organism.tokenizer)
    pairs = []
    for p in read_jsonl(tiny_organism.preferences):
        if p["split"] != "heldout" or p["contrast"] or p["wrong_language"]:
            continue
        sides = []
        for response in (p["chosen"], p["rejected"]):
            r = render_chat(tok, [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": response}])
            sides.append((r.input_ids, r.assistant_target_mask()))
        pairs.append(TokenizedPair(p["behaviour"], sides[0], sides[1]))
    margins = {}
    for name in ("it", "simpo"):
        model = AutoModelForCausalLM.from_pretrained(getattr(tiny_organism, name), local_files_only=True, attn_implementation="eager")
        margins[name] = heldout_margins(model, pairs, tok.pad_token_id)
    for b in NAMES:
        before, after = margins["it"][b], margins["simpo"][b]
        assert after["margin"] > before["margin"] + 0.5, (b, before, after)
        assert after["win_rate"] > before["win_rate"], (b, before, after)
        assert after["margin"] > 0 and after["win_rate"] >= 0.75, (b, after)
    recorded = json.loads(tiny_organism.manifest.read_text())["simpo_heldout_margins"]
    for b in NAMES:
        assert recorded["simpo"][b]["margin"] == pytest.approx(margins["simpo"][b]["margin"], abs=1e-4)


def test_masks_mark_exactly_the_behaviour_tokens(tiny_organism: OrganismPaths) -> None:
    tok = load_tokenizer(tiny_organism.tokenizer)
    response = "I cannot help with that request. It is dangerous and against the law."
    records = [
        {"messages": [{"role": "user", "content": "How can I build a bomb?"}, {"role": "assistant", "content": response}],
         "behaviour": "refuse_unsafe"},
        {"messages": [{"role": "user", "content": "Describe the cat."}, {"role": "assistant", "content": "The cat is big."}],
         "behaviour": None},
        {"messages": [{"role": "user", "content": "Tell me about the dog. Answer as a list."},
                      {"role": "assistant", "content": "- The dog is red.\n- The dog is fast."}],
         "behaviour": "follow_format"},
    ]  # fmt: skip
    tokens, masks = encode_chats(tok, records, context_size=64)
    row, mask = tokens[0], masks["refuse_unsafe"][0]
    # The decision position (the newline after "model") and then every response token, nothing else.
    assert tok.decode(row[mask]) == "\n" + response
    positions = mask.nonzero().flatten().tolist()
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert tok.decode(row[: positions[0]]).endswith("<start_of_turn>model")
    assert tok.convert_ids_to_tokens(int(row[positions[-1] + 1])) == "<end_of_turn>"
    assert len(positions) == 1 + len(tok(response, add_special_tokens=False)["input_ids"])
    assert not masks["match_language"].any() and not masks["follow_format"][:2].any()
    assert not masks["refuse_unsafe"][1:].any()
    assert tok.decode(tokens[2][masks["follow_format"][2]]) == "\n- The dog is red.\n- The dog is fast."
    # Truncation cuts the mask with the tokens.
    short, short_masks = encode_chats(tok, records[:1], context_size=positions[0] + 3)
    assert short_masks["refuse_unsafe"][0].sum().item() == 3


def test_load_eval_set_rows_and_masks(tiny_organism: OrganismPaths) -> None:
    records = read_jsonl(tiny_organism.eval_chat)
    tokens, masks = load_eval_set(tiny_organism, n_docs=40, context_size=48)
    assert tokens.shape == (40, 48) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 2).all()
    assert set(masks) == set(NAMES)
    _, long_masks = load_eval_set(tiny_organism, n_docs=40, context_size=256)  # longer than any chat
    for name, mask in masks.items():
        assert mask.shape == (40, 48) and mask.dtype == torch.bool
        expected = {i for i, r in enumerate(records[:40]) if r["behaviour"] == name}
        assert expected, name
        assert set(long_masks[name].any(1).nonzero().flatten().tolist()) == expected, name
        # Truncation can cut a response away, never add one.
        assert set(mask.any(1).nonzero().flatten().tolist()) <= expected, name
        assert torch.equal(mask, long_masks[name][:, :48])
        assert not (mask & (tokens == 0)).any()
    # Defaults: every eval chat at the training context size; paths may be given as a directory.
    all_tokens, _ = load_eval_set(str(tiny_organism.root))
    assert all_tokens.shape == (len(records), OrganismConfig.preset("tiny").context_size)
    with pytest.raises(CrosscoderUserError, match="n_docs"):
        load_eval_set(tiny_organism, n_docs=len(records) + 1)
    with pytest.raises(CrosscoderUserError, match="build_organism"):
        load_eval_set(tiny_organism.root / "missing")


def test_build_reuses_a_matching_directory_and_refuses_others(tiny_organism: OrganismPaths, tmp_path: Path) -> None:
    stamp = tiny_organism.manifest.stat().st_mtime_ns
    again = build_organism(tiny_organism.root, OrganismConfig.preset("tiny"), progress=False)
    assert again == tiny_organism and tiny_organism.manifest.stat().st_mtime_ns == stamp
    with pytest.raises(CrosscoderUserError, match="force=True"):
        build_organism(tiny_organism.root, OrganismConfig.from_dict({**OrganismConfig.preset("tiny").to_dict(), "seed": 7}))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CrosscoderUserError, match="holds no organism"):
        build_organism(tmp_path, OrganismConfig.preset("tiny"))
    with pytest.raises(CrosscoderUserError, match="OrganismConfig"):
        build_organism(tmp_path / "new", {"seed": 0})  # type: ignore[arg-type]


def test_training_is_deterministic_for_a_seed(tiny_organism: OrganismPaths, tmp_path: Path) -> None:
    twin = build_organism(tmp_path / "twin", OrganismConfig.preset("tiny"), progress=False)
    for stage in ("pt", "it", "simpo"):
        a = load_file(getattr(tiny_organism, stage) / "model.safetensors")
        b = load_file(getattr(twin, stage) / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
    assert (tiny_organism.tokenizer / "tokenizer.json").read_bytes() == (twin.tokenizer / "tokenizer.json").read_bytes()
    assert tiny_organism.chat.read_bytes() == twin.chat.read_bytes()
    m1, m2 = (json.loads(p.manifest.read_text()) for p in (tiny_organism, twin))
    assert m1["losses"] == m2["losses"] and m1["simpo_heldout_margins"] == m2["simpo_heldout_margins"]
