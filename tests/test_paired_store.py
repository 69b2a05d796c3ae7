"""The paired store: exact activations, identical exclusions, data sources, mixing, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from sae_lens_crosscoder.data_sources import build_token_stream
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.paired_store import PairedActivationsStore, build_live_provider


def make_store(live_config, tiny_pair_models, **overrides) -> PairedActivationsStore:
    models, tokenizer = tiny_pair_models
    return PairedActivationsStore.from_config(live_config(**overrides), models=models, tokenizer=tokenizer)


def test_store_output_equals_each_models_run_with_cache(live_config, tiny_pair_models):
    # a different hook per model, to check each model is read at its own hook
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    store = make_store(live_config, tiny_pair_models, hook_name=None, hook_names=hooks)
    models = tiny_pair_models[0]
    tokens = next(store.iter_token_batches(batch_size=3))
    paired = store.paired_activations(tokens)
    assert paired.shape == (3, 32, 2, 32)
    for m, (model, hook) in enumerate(zip(models, hooks)):
        _, cache = model.run_with_cache(tokens)  # the full model, no stop_at_layer
        assert torch.equal(paired[:, :, m], cache[hook])
    assert not torch.equal(paired[:, :, 0], paired[:, :, 1])


def test_rows_are_the_hook_activations_at_kept_tokens(live_config, tiny_pair_models):
    store = make_store(live_config, tiny_pair_models)
    models = tiny_pair_models[0]
    blocks = store.iter_row_blocks()
    for _ in range(2):
        block = next(blocks)
        mask = store.token_mask(block.contexts)
        caches = [model.run_with_cache(block.contexts)[1]["blocks.1.hook_resid_post"] for model in models]
        expected = torch.stack([c[mask] for c in caches], dim=1)
        assert torch.equal(block.activations, expected)
        first = block.sequence_ids.min()
        assert torch.equal(block.contexts[block.sequence_ids - first, block.positions], block.tokens)


def test_served_batches_have_the_training_layout(live_config, tiny_pair_models):
    store = make_store(live_config, tiny_pair_models)
    batch = next(store)
    assert batch.shape == (64, 2 * 32) and batch.dtype == torch.float32
    assert (store.n_models, store.d_model) == (2, 32)
    # model-major: the first d_model columns are model 0
    window_rows = store._window[:64].float().flatten(1)
    assert torch.equal(batch, window_rows)


def test_excluded_tokens_never_appear(live_config, tiny_pair_models, chat_jsonl, text_jsonl):
    tokenizer = tiny_pair_models[1]
    store = make_store(
        live_config,
        tiny_pair_models,
        dataset_path=None,
        datasets=[{"path": str(text_jsonl)}, {"path": str(chat_jsonl)}],
        exclude_special_tokens=[tokenizer.convert_tokens_to_ids("Ġthe")],
        exclude_template_tokens=True,
    )
    excluded = set(store.excluded_ids)
    assert {tokenizer.bos_token_id, tokenizer.pad_token_id} <= excluded  # always
    seen: Counter[int] = Counter()
    for _ in range(20):
        next(store)
        seen.update(store.last_tokens.tolist())
    assert not excluded & set(seen)
    # template tokens: every kept row sits at a position the chat template did not write
    stream = build_token_stream(live_config(datasets=[{"path": str(chat_jsonl)}], dataset_path=None), tokenizer)
    windows = [next(stream) for _ in range(8)]
    tokens = torch.stack([w[0] for w in windows])
    template = torch.stack([w[1] for w in windows])
    assert template.any()
    mask = store.token_mask(tokens, template)
    assert not (mask & template).any()
    start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    assert (tokens == start).any() and not (tokens[mask] == start).any()


def test_special_token_options(live_config, tiny_pair_models, chat_jsonl):
    tokenizer = tiny_pair_models[1]
    start = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    kept = make_store(live_config, tiny_pair_models, dataset_path=str(chat_jsonl), exclude_special_tokens=False)
    assert kept.excluded_ids == sorted({tokenizer.bos_token_id, tokenizer.pad_token_id})
    rows = next(kept.iter_row_blocks()).tokens
    assert (rows == start).any()
    dropped = make_store(live_config, tiny_pair_models, dataset_path=str(chat_jsonl), exclude_special_tokens=True)
    assert start in dropped.excluded_ids
    assert not (next(dropped.iter_row_blocks()).tokens == start).any()


def test_windows_follow_saelens_packing(live_config, tiny_pair_models, text_jsonl):
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    tokenizer = tiny_pair_models[1]
    stream = build_token_stream(live_config(), tokenizer)
    ours = [next(stream)[0] for _ in range(40)]
    rows = [json.loads(line)["text"] for line in text_jsonl.read_text().splitlines()]
    docs = (torch.tensor(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rows)
    theirs = concat_and_batch_sequences(
        docs, 32, begin_batch_token_id=tokenizer.bos_token_id, sequence_separator_token_id=tokenizer.bos_token_id
    )
    for window, reference in zip(ours, theirs):
        assert torch.equal(window, reference)


@pytest.mark.parametrize("fixture", ["text_txt", "text_parquet", "pretokenized_jsonl"])
def test_local_file_formats(live_config, tiny_pair_models, fixture, request):
    path = request.getfixturevalue(fixture)
    tokenizer = tiny_pair_models[1]
    store = make_store(live_config, tiny_pair_models, dataset_path=str(path))
    tokens = next(store.iter_token_batches(batch_size=4))
    assert tokens.shape == (4, 32) and (tokens[:, 0] == tokenizer.bos_token_id).all()
    if fixture == "pretokenized_jsonl":
        # rows of exactly context_size starting with BOS become the windows unchanged
        rows = [json.loads(line)["input_ids"] for line in path.read_text().splitlines()[:4]]
        assert tokens.tolist() == rows
    elif fixture == "text_txt":
        first_line = path.read_text().splitlines()[0]
        ids = tokenizer(first_line, add_special_tokens=False)["input_ids"]
        assert tokens[0, 1 : 1 + min(31, len(ids))].tolist() == ids[:31]


def test_mixing_by_token_share(live_config, tiny_pair_models, text_jsonl, chat_jsonl):
    cfg = live_config(dataset_path=None, datasets=[{"path": str(text_jsonl), "weight": 3}, {"path": str(chat_jsonl)}])
    stream = build_token_stream(cfg, tiny_pair_models[1])
    for _ in range(400):
        next(stream)
    web, chat = stream.source_tokens
    assert web / (web + chat) == pytest.approx(0.75, abs=0.03)


def test_token_stream_resumes_mid_document(live_config, tiny_pair_models, text_jsonl, chat_jsonl):
    cfg = live_config(dataset_path=None, datasets=[{"path": str(text_jsonl)}, {"path": str(chat_jsonl), "weight": 2}])
    a = build_token_stream(cfg, tiny_pair_models[1])
    for _ in range(13):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(30)]
    b = build_token_stream(cfg, tiny_pair_models[1])
    b.load_state_dict(state)
    for (t1, m1), (t2, m2) in zip(expected, (next(b) for _ in range(30))):
        assert torch.equal(t1, t2) and torch.equal(m1, m2)


def test_datasets_loop_over_epochs(live_config, tiny_pair_models, pretokenized_jsonl):
    cfg = live_config(dataset_path=str(pretokenized_jsonl))
    stream = build_token_stream(cfg, tiny_pair_models[1])
    rows = [next(stream)[0] for _ in range(61)]  # the file has 60 rows of one window each
    assert torch.equal(rows[60], rows[0])
    assert stream.sources[0].epoch == 1


def test_store_resume_gives_identical_batches(live_config, tiny_pair_models):
    cfg = live_config()
    models, tokenizer = tiny_pair_models
    first = PairedActivationsStore.from_config(cfg, models=models, tokenizer=tokenizer)
    for _ in range(7):  # mid-window (4 batches per window), after a window boundary
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [next(first) for _ in range(9)]
    second = PairedActivationsStore.from_config(cfg, models=models, tokenizer=tokenizer)
    second.load_state_dict(state)
    got = [next(second) for _ in range(9)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert second.state_dict() == first.state_dict()


def test_store_shuffles_within_windows(live_config, tiny_pair_models):
    store = make_store(live_config, tiny_pair_models)
    served = torch.cat([next(store) for _ in range(4)])  # exactly one window of 256
    rows = []
    for block in store.iter_row_blocks():
        rows.append(block.activations)
        if sum(r.shape[0] for r in rows) >= 256:
            break
    stream_order = torch.cat(rows)[:256].float().flatten(1)
    assert not torch.equal(served, stream_order)
    # same rows, new order
    assert torch.equal(served.sort(dim=0).values, stream_order.sort(dim=0).values)


def test_buffer_smaller_than_a_batch_fails_up_front(live_config):
    cfg = live_config(cache_shuffle_buffer_tokens=32, cache_chunk_tokens=32, train_batch_size_tokens=64)
    with pytest.raises(CrosscoderUserError, match="shuffle buffer holds 32 tokens .* training batch is 64"):
        build_live_provider(cfg)


def test_bad_dataset_path_and_column(live_config, tmp_path, text_jsonl):
    with pytest.raises(CrosscoderUserError, match="does not exist"):
        build_live_provider(live_config(dataset_path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(CrosscoderUserError, match="no text column 'body'"):
        build_live_provider(live_config(dataset_path=None, datasets=[{"path": str(text_jsonl), "text_column": "body"}]))
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(CrosscoderUserError, match="has no text column"):
        build_live_provider(live_config(dataset_path=str(bad)))


def test_context_longer_than_the_models_fails(live_config, tiny_pair_models):
    with pytest.raises(CrosscoderUserError, match="exceeds"):
        make_store(live_config, tiny_pair_models, context_size=512)


def test_bfloat16_models_serve_float32_batches_of_their_activations(live_config, tiny_gemma2_pair):
    cfg = live_config(model_dtype="bfloat16")
    store = build_live_provider(cfg)
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m in store.models)
    block = next(store.iter_row_blocks())
    assert block.activations.dtype == torch.bfloat16
    hook = store.models[1].run_with_cache(block.contexts)[1]["blocks.1.hook_resid_post"]
    assert torch.equal(block.activations[:, 1], hook[store.token_mask(block.contexts)])
    batch = next(store)
    assert batch.dtype == torch.float32 and batch.shape == (64, 64)


@pytest.mark.parametrize("name", ["gemma2-9b-pt-vs-simpo", "gemma2-9b-pt-vs-it"])
def test_gemma_presets_describe_a_valid_live_run(name):
    from sae_lens_crosscoder.data_sources import source_specs
    from sae_lens_crosscoder.loading import model_architectures, model_devices, model_hook_names
    from sae_lens_crosscoder.paired_store import validate_live_config
    from sae_lens_crosscoder.presets import load_preset

    cfg = load_preset(name)
    validate_live_config(cfg)  # buffer sizing, hooks, devices, dtype
    assert model_hook_names(cfg) == ["blocks.20.hook_resid_post"] * 2
    assert model_devices(cfg) == ["cuda:0", "cuda:1"] and cfg.model_dtype == "bfloat16"
    assert cfg.context_size == 1024 and cfg.expansion_factor == 32 and cfg.k == 100
    specs = source_specs(cfg)
    assert [s.weight for s in specs] == [0.5, 0.5] and [bool(s.chat) for s in specs] == [False, True]
    archs = model_architectures(cfg)
    assert cfg.model_names[0] == "google/gemma-2-9b" and archs[0] is None
    if name.endswith("simpo"):
        assert cfg.model_names[1] == "princeton-nlp/gemma-2-9b-it-SimPO" and archs[1] == "google/gemma-2-9b-it"
    else:
        assert cfg.model_names[1] == "google/gemma-2-9b-it"


def test_gemma2_9b_hook_checks_run_without_weights():
    # the pre-load check builds a weightless 9B skeleton from TransformerLens's config
    from sae_lens_crosscoder.loading import check_hooks, skeleton_model

    skeletons = [skeleton_model("google/gemma-2-9b"), skeleton_model("princeton-nlp/gemma-2-9b-it-SimPO", "google/gemma-2-9b-it")]
    assert all(s is not None for s in skeletons)
    assert check_hooks(["pt", "simpo"], skeletons, ["blocks.20.hook_resid_post"] * 2) == 3584
    with pytest.raises(CrosscoderUserError, match="nearest valid name is 'blocks.41.hook_resid_post'"):
        check_hooks(["pt", "simpo"], skeletons, ["blocks.42.hook_resid_post"] * 2)
