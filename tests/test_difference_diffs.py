"""Difference SAEs in the diff registry: declared next to crosscoders, trained on a
crosscoder's data, analysed joined to it, and selectable as a latent set for labelling and
the category shift."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sae_lens_crosscoder.diffs import pipeline
from sae_lens_crosscoder.diffs.command import split_overrides
from sae_lens_crosscoder.diffs.pipeline import run_diff
from sae_lens_crosscoder.diffs.registry import ModelDiff, register_diff
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.labels import read_labels
from sae_lens_crosscoder.labelling.selection import AnalysisDir, SelectionRule, select_latents
from test_difference_view import organism, write_cache


def spec_dict(cache: str = "/data/cache") -> dict:
    return {
        "name": "toy-difference",
        "description": "a crosscoder and a difference SAE of one pair",
        "models": {"base": "pt", "ft": "ft"},
        "crosscoders": [{"name": "pt-ft", "config": {
            "model_names": ["pt", "ft"], "architecture": "batchtopk_crosscoder", "d_sae": 32, "k": 2,
            "k_anneal_steps": 10, "n_shared_latents": 2, "cached_activations_path": cache, "training_tokens": 131_072,
            "train_batch_size_tokens": 1024, "cache_chunk_tokens": 4096, "cache_shuffle_buffer_tokens": 65_536,
            "n_batches_for_norm_estimate": 4},
            "analysis": {"batch_tokens": 4096, "ce_eval_tokens": 0, "progress": False}}],
        "difference_saes": [{"name": "ft-minus-pt", "crosscoder": "pt-ft", "config": {"d_sae": 8, "k": 0.05},
                             "analysis": {"batch_tokens": 4096, "progress": False}, "join": {"cos_min": 0.6}}],
        "set_a": {"name": "crosscoder-latents", "crosscoder": "pt-ft", "model": "ft",
                  "selection": {"rule": "all", "max_latents": 3}},
        "set_b": {"name": "changes", "crosscoder": "ft-minus-pt", "model": "ft", "source": "difference"},
        "labeller": {"kind": "rules"},
        "n_bootstrap": 20,
    }


def test_difference_sae_inherits_the_crosscoders_data(tmp_path: Path) -> None:
    diff = ModelDiff.from_dict(spec_dict())
    assert ModelDiff.from_dict(json.loads(json.dumps(diff.to_dict()))) == diff
    assert diff.set_b.selection == SelectionRule(rule="frequency")  # the default for difference latents
    assert diff.spec_names == ["pt-ft", "ft-minus-pt"]
    configs = diff.run_configs(tmp_path, {"ft-minus-pt": ["lr=0.001"]})
    cc, sae = configs["pt-ft"], configs["ft-minus-pt"]
    assert (sae.mode, sae.architecture, sae.d_sae, sae.k, sae.lr) == ("difference", "batchtopk", 8, 0.05, 0.001)
    assert sae.cached_activations_path == cc.cached_activations_path == "/data/cache"
    assert sae.model_names == ["pt", "ft"] and sae.training_tokens == cc.training_tokens
    assert sae.n_shared_latents == 0 and sae.k_anneal_steps is None  # crosscoder keys stay with the crosscoder
    assert sae.output_path == str(tmp_path / "ft-minus-pt" / "sae")
    diff.validate(tmp_path)
    # untargeted overrides reach both, except crosscoder keys
    split = split_overrides(["lr=0.01", "architecture=topk_crosscoder", "ft-minus-pt:architecture=topk"],
                            ["pt-ft"], ["ft-minus-pt"])
    assert split == {"pt-ft": ["lr=0.01", "architecture=topk_crosscoder"], "ft-minus-pt": ["lr=0.01", "architecture=topk"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["set_b"].update(crosscoder="pt-ft"), "latent set 'changes' names difference SAE 'pt-ft'"),
        (lambda d: d["set_b"].update(selection={"rule": "latent_scaling"}), "selected by rule frequency or all"),
        (lambda d: d["difference_saes"][0].update(crosscoder="pt-it"), "difference SAE 'ft-minus-pt' names crosscoder 'pt-it'"),
        (lambda d: d["difference_saes"][0].update(name="pt-ft"), "must be present and distinct"),
        (lambda d: d["difference_saes"][0].update(join={"cos_mn": 0.5}), "did you mean 'cos_min'"),
        (lambda d: d["difference_saes"][0].update(crosscoder=None, config={}), "name the crosscoder whose data it trains on"),
    ],
)
def test_bad_difference_specs(change, message: str) -> None:
    raw = spec_dict()
    change(raw)
    with pytest.raises(CrosscoderUserError, match=message):
        ModelDiff.from_dict(raw)


def test_difference_set_must_name_the_fine_tuned_model(tmp_path: Path) -> None:
    raw = spec_dict()
    raw["set_b"]["model"] = "pt"
    with pytest.raises(CrosscoderUserError, match="encodes ft - pt; name its fine-tuned model 'ft'"):
        ModelDiff.from_dict(raw).validate(tmp_path)


def test_chain_trains_joins_and_labels_difference_latents(tmp_path: Path) -> None:
    data = organism(1000, 0, "independent")
    cache = write_cache(tmp_path / "cache", data)
    diff = register_diff(ModelDiff.from_dict(spec_dict(str(cache))), overwrite=True)
    run = run_diff(diff, root=tmp_path / "run")
    ran = [(r.step, r.target) for r in run.records if r.status == "ran"]
    assert ran == [("train", "pt-ft"), ("analyze", "pt-ft"), ("train", "ft-minus-pt"), ("analyze", "ft-minus-pt"),
                   ("label", "crosscoder-latents"), ("label", "changes"), ("shift", "diff"), ("report", "diff")]
    analysis = tmp_path / "run" / "ft-minus-pt" / "analysis"
    table = pd.read_parquet(analysis / "latents.parquet")
    live = table[table["freq"] > 0]
    assert len(live) == 1 and live["join_verdict"].tolist() == ["match"]  # the planted change, found by both views
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["thresholds"]["cos_min"] == 0.6 and summary["join"]["crosscoder"].endswith("pt-ft/crosscoder")
    with pytest.raises(CrosscoderUserError, match="analyses a difference SAE, whose latents are not exclusive"):
        select_latents(AnalysisDir(analysis), SelectionRule())  # the crosscoder default
    assert select_latents(AnalysisDir(analysis), SelectionRule(rule="frequency")) == live["latent"].tolist()
    labels = read_labels(analysis / "labels_changes.parquet")
    assert labels["latent"].unique().tolist() == live["latent"].tolist()
    assert labels.attrs["provenance"]["selection"]["rule"] == "frequency"
    cc_report = (tmp_path / "run" / "pt-ft" / "analysis" / "report.html").read_text()
    assert "Difference view: an SAE on ft − pt" in cc_report
    assert "ft-minus-pt (difference SAE)" in (tmp_path / "run" / "report.html").read_text()
    again = run_diff(diff, root=tmp_path / "run")
    assert {r.status for r in again.records} == {"skipped"}
    # re-analysing the crosscoder re-joins the difference SAE without retraining it
    again = run_diff(diff, root=tmp_path / "run", redo=["analyze"])
    ran = [(r.step, r.target) for r in again.records if r.status == "ran"]
    assert ("analyze", "ft-minus-pt") in ran and ("train", "ft-minus-pt") not in ran
    assert pipeline.analysis_done(analysis)
