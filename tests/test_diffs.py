"""The registry of diffs, the Gemma-2 / SimPO diff, and the diff chain with fake heavy steps."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.diffs import pipeline
from sae_lens_crosscoder.diffs.pipeline import run_diff
from sae_lens_crosscoder.diffs.registry import (
    CrosscoderSpec,
    LabellerSpec,
    LatentSetSpec,
    ModelDiff,
    get_diff,
    list_diffs,
    register_diff,
)
from sae_lens_crosscoder.diffs.steps import Steps
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.labels import read_labels
from sae_lens_crosscoder.labelling.synthetic import SyntheticLatent, write_synthetic_analysis
from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

GEMMA = "gemma2-9b-it-vs-simpo"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_gemma_diff_resolves_offline(no_network: None, tmp_path: Path) -> None:
    diff = get_diff(GEMMA)
    assert GEMMA in list_diffs()
    assert diff.models == {"pt": "google/gemma-2-9b", "it": "google/gemma-2-9b-it",
                           "simpo": "princeton-nlp/gemma-2-9b-it-SimPO"}
    configs = diff.run_configs(tmp_path)
    assert configs["pt-simpo"].model_names == ["google/gemma-2-9b", "princeton-nlp/gemma-2-9b-it-SimPO"]
    assert configs["pt-simpo"].model_architectures == [None, "google/gemma-2-9b-it"]
    assert configs["pt-it"].model_names == ["google/gemma-2-9b", "google/gemma-2-9b-it"]
    for name, cfg in configs.items():
        assert cfg.architecture == "batchtopk_crosscoder" and cfg.expansion_factor == 32 and cfg.k == 100
        assert cfg.hook_name == "blocks.20.hook_resid_post"
        assert cfg.output_path == str(tmp_path / name / "crosscoder") and cfg.cached_activations_path is None
    assert diff.root() == Path("runs") / GEMMA
    assert diff.set_a.name == "it-only" and diff.set_a.crosscoder == "pt-it" and diff.set_a.published_count == 113
    assert diff.set_b.name == "SimPO-only" and diff.set_b.crosscoder == "pt-simpo" and diff.set_b.published_count == 92
    sel = diff.set_b.resolved_selection()
    assert (sel.rule, sel.model, sel.nu_error_max, sel.nu_reconstruction_max, sel.delta_norm_min) == (
        "latent_scaling", "princeton-nlp/gemma-2-9b-it-SimPO", 0.2, 0.5, None)
    assert diff.taxonomy == "capabilities-v1" and diff.labeller.kind == "llm" and diff.share == "per_latent"
    diff.validate(tmp_path)


def test_gemma_reference_results() -> None:
    diff = get_diff(GEMMA)
    refs = {r.category: r for r in diff.references}
    expected = {
        "instruction_following": (151.7, "abstract"), "factual_verification": (88.8, "abstract"),
        "multilingual": (43.8, "abstract"), "safety": (32.8, "abstract"), "template_following": (None, "abstract"),
        "code_generation": (-28.1, "secondary summaries"), "technical": (-17.4, "secondary summaries"),
        "query_classification": (-37.1, "secondary summaries"), "structured_output": (-37.1, "secondary summaries"),
        "self_reference": (-44.1, "abstract"), "hallucination_management": (-68.5, "abstract"),
    }
    assert {k: (r.relative_change, r.provenance) for k, r in refs.items()} == expected
    assert refs["template_following"].direction == "up"
    taxonomy = get_taxonomy(diff.taxonomy)
    for ref in diff.references:
        assert taxonomy.get(ref.category)
    notes = " ".join(diff.notes)
    for unknown in ("layer", "dictionary size", "annotator", "nu thresholds", "92", "113"):
        assert unknown in notes
    values = {v.category: v.value for v in diff.reference_values()}
    assert values["hallucination_management"] == -68.5 and values["template_following"] is None


def test_published_figure_needs_more_than_single_label_shares() -> None:
    """The method note's claim, checked: no k of 92 and m of 113 single-label latents give +151.7 %."""
    reachable = {round((k / 92 - m / 113) / (m / 113) * 100, 1) for k in range(93) for m in range(1, 114)}
    assert 151.7 not in reachable and -68.5 in reachable


def test_diff_round_trip_and_registry_errors() -> None:
    diff = get_diff(GEMMA)
    raw = json.loads(json.dumps(diff.to_dict()))
    assert ModelDiff.from_dict(raw) == diff
    assert register_diff(ModelDiff.from_dict(raw)) == diff  # identical: no-op
    with pytest.raises(CrosscoderUserError, match="already registered"):
        register_diff(GEMMA, **{**{k: v for k, v in raw.items() if k != "name"}, "share": "per_label"})
    with pytest.raises(CrosscoderUserError, match="did you mean 'gemma2-9b-it-vs-simpo'"):
        get_diff("gemma2-9b-it-vs-simp0")
    bad = {**raw, "name": "bad-set"}
    bad["set_a"] = {**raw["set_a"], "crosscoder": "pt-llama"}
    with pytest.raises(CrosscoderUserError, match="names crosscoder 'pt-llama'"):
        ModelDiff.from_dict(bad)
    with pytest.raises(CrosscoderUserError, match="unknown key 'taxonomi'.*did you mean 'taxonomy'"):
        ModelDiff.from_dict({**raw, "taxonomi": "x"})
    with pytest.raises(CrosscoderUserError, match="contradicts direction"):
        ModelDiff.from_dict({**raw, "references": [{**raw["references"][0], "direction": "down"}]})


# ---- the chain, with fake cache / train / analyze --------------------------------------
def fake_latents(model: str, flavour: str) -> list[SyntheticLatent]:
    text = {
        "translate": ["please *translate* into *French*", "*bonjour* my friend", "*en* *español* please"],
        "code": ["x = *def* foo ( ) :", "*import* os", "*return* value"],
        "safety": ["I *refuse* to help with *weapons*", "that is *harmful*", "*illegal* request"],
        "plain": ["the *weather* is nice", "a *green* field", "*walking* slowly"],
    }
    ft = f"only:{model}"
    out = []
    for i, kind in enumerate(flavour):
        name = {"t": "translate", "c": "code", "s": "safety", "p": "plain"}[kind]
        out.append(SyntheticLatent(i, text[name], ft, 0.05 + 0.001 * i, 0.1, 0.95))
    out.append(SyntheticLatent(len(flavour), ["hello *world*"], "shared", 0.9, 0.9, 0.5))
    return out


class FakeSteps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def cache(self, cfg: Any) -> None:
        self.calls.append(("cache", cfg.model_names[1]))
        Path(cfg.cached_activations_path).mkdir(parents=True, exist_ok=True)
        (Path(cfg.cached_activations_path) / "cache.json").write_text(json.dumps({"complete": True}))

    def train(self, cfg: Any) -> None:
        self.calls.append(("train", cfg.model_names[1]))
        assert cfg.cached_activations_path is not None  # the toy diff caches
        out = Path(cfg.output_path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cfg.json").write_text("{}")
        (out / "training_summary.json").write_text(json.dumps({"d_sae": cfg.d_sae}))

    def analyze(self, crosscoder: Path, out: Path, cfg: Any, options: dict[str, Any]) -> None:
        self.calls.append(("analyze", cfg.model_names[1]))
        assert options == {"rule": "latent_scaling"} and (crosscoder / "cfg.json").is_file()
        flavour = "ttcp" if cfg.model_names[1] == "ft1" else "tttcsss"
        write_synthetic_analysis(out, cfg.model_names, fake_latents(cfg.model_names[1], flavour))

    def steps(self) -> Steps:
        return Steps(cache=self.cache, train=self.train, analyze=self.analyze)


def toy_diff(name: str = "toy-diff") -> ModelDiff:
    def cc(ft: str) -> CrosscoderSpec:
        return CrosscoderSpec(f"base-{ft}", config={"model_names": ["base", ft], "d_sae": 32, "training_tokens": 4096,
                                                   "train_batch_size_tokens": 1024},
                              cache=True, analysis={"rule": "latent_scaling"})

    return register_diff(
        name,
        description="toy",
        models={"base": "base", "ft1": "ft1", "ft2": "ft2"},
        crosscoders=[cc("ft1"), cc("ft2")],
        set_a=LatentSetSpec("ft1-only", "base-ft1", "ft1"),
        set_b={"name": "ft2-only", "crosscoder": "base-ft2", "model": "ft2"},
        labeller=LabellerSpec("rules"),
        n_bootstrap=200,
        references=[{"category": "safety", "published_name": "safety", "relative_change": 50.0, "direction": "up",
                     "provenance": "abstract"}],
        overwrite=True,
    )


def statuses(run: pipeline.DiffRun) -> dict[tuple[str, str], str]:
    return {(r.step, r.target): r.status for r in run.records}


def test_chain_runs_then_skips(tmp_path: Path) -> None:
    diff, fake = toy_diff(), FakeSteps()
    run = run_diff(diff, root=tmp_path, steps=fake.steps())
    assert fake.calls == [("cache", "ft1"), ("train", "ft1"), ("analyze", "ft1"),
                          ("cache", "ft2"), ("train", "ft2"), ("analyze", "ft2")]
    assert set(statuses(run).values()) == {"ran"} and len(run.records) == 10
    # the labelled sets: ft1 has 4 exclusive latents (t t c p), ft2 has 7 (t t t c s s s)
    a = read_labels(tmp_path / "base-ft1" / "analysis" / "labels_ft1-only.parquet")
    b = read_labels(tmp_path / "base-ft2" / "analysis" / "labels_ft2-only.parquet")
    assert a["latent"].nunique() == 4 and b["latent"].nunique() == 7
    shift = pipeline.shift_of(run).set_index("category")
    assert (shift.loc["multilingual", "count_a"], shift.loc["multilingual", "count_b"]) == (2, 3)
    assert shift.loc["multilingual", "rel_change"] == pytest.approx((3 / 7 - 2 / 4) / (2 / 4))
    assert shift.loc["safety", "count_a"] == 0 and shift.loc["safety", "rel_change"] == float("inf")
    report = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64" in report and "Latents by category: ft2-only" in report
    assert "+50.0%" in report  # the reference value beside the measured one
    for cc in ("base-ft1", "base-ft2"):
        sections = sorted(p.name for p in (tmp_path / cc / "analysis" / "report_sections").iterdir())
        assert "50_category_shift.html" in sections
    assert json.loads((tmp_path / "diff.json").read_text())["diff"]["name"] == "toy-diff"

    fake.calls.clear()
    again = run_diff(diff, root=tmp_path, steps=fake.steps())
    assert fake.calls == [] and set(statuses(again).values()) == {"skipped"}


def test_chain_reruns_what_depends_on_a_change(tmp_path: Path) -> None:
    diff, fake = toy_diff(), FakeSteps()
    run_diff(diff, root=tmp_path, steps=fake.steps())

    fake.calls.clear()
    run = run_diff(diff, root=tmp_path, steps=fake.steps(), redo=["label"])
    assert fake.calls == []
    assert {k for k, v in statuses(run).items() if v == "ran"} == {
        ("label", "ft1-only"), ("label", "ft2-only"), ("shift", "diff"), ("report", "diff")}

    # a missing analysis reruns that analysis and everything downstream of it, nothing else
    (tmp_path / "base-ft2" / "analysis" / "summary.json").unlink()
    run = run_diff(diff, root=tmp_path, steps=fake.steps())
    assert fake.calls == [("analyze", "ft2")]
    assert {k for k, v in statuses(run).items() if v == "ran"} == {
        ("analyze", "base-ft2"), ("label", "ft2-only"), ("shift", "diff"), ("report", "diff")}

    # another share definition reruns the shift and the report only
    run = run_diff(diff, root=tmp_path, steps=fake.steps(), share="per_label")
    assert {k for k, v in statuses(run).items() if v == "ran"} == {("shift", "diff"), ("report", "diff")}
    assert "another" not in str(run.records[-2].reason) and "per_label" in run.records[-2].reason

    # a different labeller makes the labels stale
    csv = tmp_path / "manual.csv"
    csv.write_text("latent,category\n0,math\n1,math\n2,math\n3,math\n4,math\n5,math\n6,math\n")
    run = run_diff(diff, root=tmp_path, steps=fake.steps(), labeller=LabellerSpec("manual", {"csv": str(csv)}))
    label = next(r for r in run.records if r.step == "label")
    assert label.status == "ran" and "labelled by rules, manual requested" in label.reason

    fake.calls.clear()
    run = run_diff(diff, root=tmp_path, steps=fake.steps(), force=True, labeller=LabellerSpec("rules"))
    assert len(fake.calls) == 6 and set(statuses(run).values()) == {"ran"}


def test_labeller_settings_fail_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeSteps()
    with pytest.raises(CrosscoderUserError, match="no LLM model given"):
        run_diff(toy_diff(), root=tmp_path, steps=fake.steps(), labeller=LabellerSpec("llm"))
    assert fake.calls == []
    # planning builds no labeller
    run = run_diff(toy_diff(), root=tmp_path, steps=fake.steps(), labeller=LabellerSpec("llm"), dry_run=True)
    assert statuses(run)[("label", "ft1-only")] == "would run" and fake.calls == []


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    fake = FakeSteps()
    run = run_diff(toy_diff(), root=tmp_path, steps=fake.steps(), dry_run=True)
    assert fake.calls == [] and set(statuses(run).values()) == {"would run"}
    assert not tmp_path.joinpath("diff.json").exists()


def test_diff_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      no_network: None) -> None:
    assert main(["diff", "--list"]) == 0
    out = capsys.readouterr().out
    assert GEMMA in out and "SimPO-only vs it-only" in out

    assert main(["diff", GEMMA, "--show", "--out", str(tmp_path), "--set", "pt-it:training_tokens=1000000"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_configs"]["pt-it"]["training_tokens"] == 1_000_000
    assert shown["run_configs"]["pt-simpo"]["training_tokens"] == 100_000_000
    assert shown["diff"]["references"][0]["relative_change"] == 151.7

    assert main(["diff", GEMMA, "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train    pt-simpo         would run (artifacts missing)" in out
    assert "label    SimPO-only       would run" in out

    assert main(["diff", "gemma2-9b-it-vs-simp"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["diff", GEMMA, "--set", "pt-llama:lr=1"]) == 2
    assert "no crosscoder 'pt-llama'" in capsys.readouterr().err
    assert main(["diff"]) == 2

    # the whole chain through the CLI, the heavy steps faked
    toy_diff("toy-cli")
    fake = FakeSteps()
    monkeypatch.setattr(pipeline, "default_steps", fake.steps)
    assert main(["diff", "toy-cli", "--out", str(tmp_path / "toy"), "--labeller", "rules", "--rule-threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "report   diff             ran" in out and (tmp_path / "toy" / "report.html").is_file()
    labels = read_labels(tmp_path / "toy" / "base-ft1" / "analysis" / "labels_ft1-only.parquet")
    assert labels.attrs["provenance"]["labeller"]["threshold"] == 0.5
    assert main(["diff", "toy-cli", "--out", str(tmp_path / "toy")]) == 0
    assert "ran" not in capsys.readouterr().out.replace("(artifacts exist)", "")


def test_chain_with_the_real_training_and_analysis(tmp_path: Path) -> None:
    """The default steps on two tiny synthetic caches: runner.train, then the analysis
    package's analyze and report builder, then labelling, shift and report."""
    pytest.importorskip("sae_lens_crosscoder.analysis.pipeline")
    from sae_lens_crosscoder.synthetic import PairedSyntheticSource, planted_paired_features, write_synthetic_cache

    def cc(ft: str, seed: int) -> CrosscoderSpec:
        src = PairedSyntheticSource(planted_paired_features(d_model=8, n_shared=4, n_exclusive=2, seed=seed), seed=seed)
        write_synthetic_cache(tmp_path / f"cache-{ft}", src, 4096, shard_tokens=4096, model_names=["base", ft])
        return CrosscoderSpec(
            f"base-{ft}",
            config={"model_names": ["base", ft], "d_sae": 16, "k": 2, "cached_activations_path": str(tmp_path / f"cache-{ft}"),
                    "training_tokens": 2048, "train_batch_size_tokens": 256, "cache_chunk_tokens": 256,
                    "cache_shuffle_buffer_tokens": 1024, "n_batches_for_norm_estimate": 2},
            analysis={"rule": "latent_scaling", "n_tokens": 1024, "batch_tokens": 512, "ce_eval_tokens": 0,
                      "progress": False})

    every = {"rule": "all", "max_latents": 5}  # tiny crosscoders have no reliably exclusive latents
    diff = register_diff("toy-real", description="real steps", models={}, crosscoders=[cc("ft1", 0), cc("ft2", 1)],
                         set_a={"name": "ft1-set", "crosscoder": "base-ft1", "model": "ft1", "selection": every},
                         set_b={"name": "ft2-set", "crosscoder": "base-ft2", "model": "ft2", "selection": every},
                         labeller={"kind": "rules"}, n_bootstrap=50, overwrite=True)
    run = run_diff(diff, root=tmp_path / "run")
    assert set(statuses(run).values()) == {"ran"}
    for ft in ("ft1", "ft2"):
        analysis = tmp_path / "run" / f"base-{ft}" / "analysis"
        assert pipeline.training_done(tmp_path / "run" / f"base-{ft}" / "crosscoder") and pipeline.analysis_done(analysis)
        assert read_labels(analysis / f"labels_{ft}-set.parquet")["latent"].nunique() == 5
        report = (analysis / "report.html").read_text()
        assert "Category shift" in report and f"Latents by category: {ft}-set" in report
    shift = pipeline.shift_of(run)
    assert shift["n_a"].iloc[0] + shift.attrs["definitions"]["n_failed_a"] == 5
    assert set(statuses(run_diff(diff, root=tmp_path / "run")).values()) == {"skipped"}


def test_chain_caches_from_live_models(tiny_gemma2_pair: Any, text_jsonl: Path, tmp_path: Path) -> None:
    """cache=True on the tiny Gemma-2 pair: the real cache step (live models), training
    from the cache, the analysis with decoded tokens, then labels whose examples are text."""
    pytest.importorskip("sae_lens_crosscoder.analysis.pipeline")
    spec = CrosscoderSpec(
        "tiny", cache=True,
        config=dict(architecture="batchtopk_crosscoder", d_sae=32, k=4, model_names=tiny_gemma2_pair.names,
                    hook_name="blocks.1.hook_resid_post", dataset_path=str(text_jsonl), context_size=32,
                    store_batch_size_prompts=4, train_batch_size_tokens=64, training_tokens=64 * 8,
                    cache_token_budget=1024, cache_shuffle_buffer_tokens=256, cache_chunk_tokens=128,
                    cache_shard_tokens=512, n_batches_for_norm_estimate=2, seed=7),
        analysis={"n_tokens": 512, "batch_tokens": 256, "ce_eval_tokens": 0, "progress": False})
    every = {"rule": "all", "max_latents": 4}
    ft = tiny_gemma2_pair.names[1]
    diff = register_diff("toy-live", description="live", models={}, crosscoders=[spec],
                         set_a={"name": "first", "crosscoder": "tiny", "model": ft, "selection": every},
                         set_b={"name": "second", "crosscoder": "tiny", "model": ft,
                                "selection": {**every, "max_latents": 8}},
                         labeller={"kind": "rules"}, n_bootstrap=20, overwrite=True)
    run = run_diff(diff, root=tmp_path)
    assert [r.step for r in run.records if r.status == "ran"] == ["cache", "train", "analyze", "label", "label",
                                                                  "shift", "report"]
    assert pipeline.cache_done(tmp_path / "tiny" / "cache")
    from sae_lens_crosscoder.labelling.examples import read_examples

    examples = read_examples(tmp_path / "tiny" / "analysis" / "examples.jsonl")
    words = {t.strip().lower() for ex in examples.values() for e in ex.top for t in e.tokens}
    assert words & {"the", "cat", "dog", "runs", "and"}  # decoded text, not ids
