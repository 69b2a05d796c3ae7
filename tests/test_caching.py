"""`cache`: the paired cache format, resuming an interrupted write, and cache == live data."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sae_lens_crosscoder import cli
from sae_lens_crosscoder.activation_cache import CachedActivationProvider, open_cache
from sae_lens_crosscoder.caching import cache_activations, default_token_budget
from sae_lens_crosscoder.paired_store import PairedActivationsStore
from sae_lens_crosscoder.runner import build_data_provider, train


def store_for(cfg, tiny_pair_models) -> PairedActivationsStore:
    models, tokenizer = tiny_pair_models
    return PairedActivationsStore.from_config(cfg, models=models, tokenizer=tokenizer)


def read_shards(path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(s.path)) for s in open_cache(path).shards]


def test_cache_format(live_config, tiny_pair_models, chat_jsonl, text_jsonl, tmp_path):
    cfg = live_config(
        dataset_path=None,
        datasets=[{"path": str(text_jsonl)}, {"path": str(chat_jsonl)}],
        exclude_template_tokens=True,
        cache_token_budget=1300,  # not a whole number of shards (512)
    )
    out = cache_activations(cfg, tmp_path / "cache", store=store_for(cfg, tiny_pair_models), progress=False)
    info = open_cache(out)
    assert info.n_tokens == 1300 and [s.n_tokens for s in info.shards] == [512, 512, 276]
    assert (info.n_models, info.d_model) == (2, 32)
    manifest = json.loads((out / "cache.json").read_text())
    assert manifest["complete"] and manifest["order"] == "stream"
    assert manifest["model_names"] == cfg.model_names
    assert manifest["hook_names"] == ["blocks.1.hook_resid_post"] * 2
    assert manifest["context_size"] == 32 and manifest["token_budget"] == 1300
    assert [d["path"] for d in manifest["datasets"]] == [str(text_jsonl), str(chat_jsonl)]

    contexts = load_file(str(out / "contexts" / "tokens.safetensors"))["tokens"]
    assert contexts.shape[1] == 32 and contexts.dtype == torch.long
    shards = read_shards(out)
    tokens = torch.cat([s["tokens"] for s in shards])
    seq = torch.cat([s["sequence_ids"] for s in shards])
    pos = torch.cat([s["positions"] for s in shards])
    assert torch.equal(contexts[seq, pos], tokens)  # each row's context can be rebuilt
    assert not torch.isin(tokens, torch.tensor(manifest["excluded_token_ids"])).any()
    # rows are in stream order and are the models' activations at those tokens
    assert (seq.diff() >= 0).all()
    models = tiny_pair_models[0]
    acts = torch.cat([s["activations"] for s in shards])
    first_windows = contexts[:4]
    for m, model in enumerate(models):
        hook = model.run_with_cache(first_windows)[1]["blocks.1.hook_resid_post"]
        rows = seq < 4
        assert torch.equal(acts[rows, m], hook[seq[rows], pos[rows]])


def test_training_from_the_cache_sees_the_live_batches(live_config, tiny_pair_models, tmp_path):
    cfg = live_config(training_tokens=64 * 30)
    assert default_token_budget(cfg) == 2048  # (30 + 2 norm batches) * 64, in whole windows of 256
    out = cache_activations(cfg, tmp_path / "cache", store=store_for(cfg, tiny_pair_models), progress=False)
    cached_cfg = live_config(training_tokens=64 * 30, cached_activations_path=str(out))
    from_cache = build_data_provider(cached_cfg)
    assert isinstance(from_cache, CachedActivationProvider) and not from_cache.shuffle_chunks
    live = store_for(cfg, tiny_pair_models)
    for _ in range(32):
        assert torch.equal(next(from_cache), next(live))

    # and so a whole run trains to the same weights
    live_result = train(live_config(training_tokens=64 * 30, output_path=str(tmp_path / "live")),
                        data_provider=store_for(cfg, tiny_pair_models))
    cached_result = train(live_config(training_tokens=64 * 30, cached_activations_path=str(out),
                                      output_path=str(tmp_path / "cached")))
    for name, value in live_result.sae.state_dict().items():
        assert torch.equal(value, cached_result.sae.state_dict()[name]), name


def test_interrupted_cache_resumes_to_the_same_shards(live_config, tiny_pair_models, tmp_path, monkeypatch):
    cfg = live_config(cache_token_budget=2000)
    reference = cache_activations(cfg, tmp_path / "reference", store=store_for(cfg, tiny_pair_models), progress=False)

    store = store_for(cfg, tiny_pair_models)
    original = store.iter_row_blocks

    def dies_after_ten_blocks(stream_state=None):
        for i, block in enumerate(original(stream_state)):
            if i == 10:
                raise KeyboardInterrupt
            yield block

    monkeypatch.setattr(store, "iter_row_blocks", dies_after_ten_blocks)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(cfg, tmp_path / "cache", store=store, progress=False)
    partial = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert not partial["complete"] and 0 < partial["n_tokens"] < 2000
    assert partial["n_tokens"] % 512 == 0 and "resume" in partial

    resumed = cache_activations(cfg, tmp_path / "cache", store=store_for(cfg, tiny_pair_models), progress=False)
    ours, theirs = read_shards(resumed), read_shards(reference)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(
        load_file(str(resumed / "contexts" / "tokens.safetensors"))["tokens"],
        load_file(str(reference / "contexts" / "tokens.safetensors"))["tokens"],
    )


def test_cache_cli(live_config, tmp_path, capsys):
    cfg = live_config(cache_token_budget=600)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert cli.main(["cache", str(path), "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "cached 600 tokens" in capsys.readouterr().out
    assert open_cache(tmp_path / "c").n_tokens == 600
    # a rerun of a finished cache does nothing
    assert cli.main(["cache", str(path), "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    # a different config cannot reuse or continue it
    assert cli.main(["cache", str(path), "--out", str(tmp_path / "c"), "--set", "context_size=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different context_size (32 vs 16)" in err
    # nor can a finished cache grow
    assert cli.main(["cache", str(path), "--out", str(tmp_path / "c"), "--set", "cache_token_budget=1200"]) == 2
    assert "complete at 600 tokens" in capsys.readouterr().err


def test_cache_shards_must_be_whole_chunks(live_config, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(live_config(cache_shard_tokens=500).to_dict()))
    assert cli.main(["cache", str(path), "--out", str(tmp_path / "c")]) == 2
    assert "multiple of cache_chunk_tokens" in capsys.readouterr().err


def test_cache_names_its_tokenizer_so_analysis_examples_are_text(live_config, tiny_pair_models, tmp_path):
    from sae_lens_crosscoder.analysis.sources import CacheSource

    cfg = live_config(cache_token_budget=600)
    out = cache_activations(cfg, tmp_path / "cache", store=store_for(cfg, tiny_pair_models), progress=False)
    manifest = json.loads((out / "cache.json").read_text())
    tokenizer = tiny_pair_models[1]
    assert manifest["tokenizer"] == tokenizer.name_or_path
    source = CacheSource(out)  # no tokenizer passed: found through the manifest
    assert source.tokenizer is not None
    assert source.tokenizer.get_vocab() == tokenizer.get_vocab()
