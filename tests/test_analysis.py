"""The analysis pass end to end: known answers on planted data, the table against direct
computation, N > 2 models, token budgets, live models, and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis_helpers import FakeStore, random_crosscoder, tiny_pair, trained_l1, write_sequence_cache
from sae_lens_crosscoder.analysis import AnalysisConfig, LiveSource, SelectionThresholds, analyze, classify
from sae_lens_crosscoder.analysis.latent_scaling import compute_latent_scaling
from sae_lens_crosscoder.analysis.pipeline import load_crosscoder
from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.synthetic import match_planted


@pytest.fixture(autouse=True)
def restore_logging():
    """cli.main installs a stderr handler on the root logger; drop it after each test so
    later log calls do not write to a closed capture stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_complete_shrinkage_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """L1 crosscoder, planted data: features present in both models but 4x weaker in the base
    look chat-only by delta-norm (the base decoder is shrunk); Latent Scaling's nu^e finds
    them in the base, so the Minder rule does not call them chat-only. Truly exclusive
    features get nu ~ 0 and keep their class."""
    run = trained_l1()
    out = tmp_path / "out"
    code = main(["analyze", "--crosscoder", str(run["crosscoder"]), "--activations", str(run["cache"]),
                 "--out", str(out), "--no-progress", "--batch-tokens", "8192"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_parquet(out / "latents.parquet")
    cc = load_crosscoder(run["crosscoder"])
    features = run["features"]
    match = match_planted(cc.W_dec.detach().unflatten(-1, (2, 16)), features, cc.activation_scaling_factors)
    assert float(match["cosine"].min()) > 0.9  # every planted feature has its latent

    def rows(kind: str) -> pd.DataFrame:
        return table.iloc[match["latent"][features.indices(kind)].tolist()]

    weaker, chat_only, base_only = rows("weaker:0"), rows("only:1"), rows("only:0")
    print("weaker:", weaker[["latent", "delta_norm", "nu_error", "nu_reconstruction", "class"]].to_dict("records"))
    print("chat-only:", chat_only[["latent", "delta_norm", "nu_error", "nu_reconstruction"]].to_dict("records"))
    # the artifact: delta-norm alone says chat-only
    assert (weaker["delta_norm"] >= 0.9).all()
    # caught: nu^e clearly above the 0.2 cut (true base share is 0.25 times the scale ratio)
    assert (weaker["nu_error"] > 0.25).all()
    assert (weaker["class"] != "only:chat").all()
    # exclusive features: nu near 0 in their own direction, class kept
    assert (chat_only["nu_error"].abs() < 0.05).all() and (chat_only["class"] == "only:chat").all()
    assert (base_only["nu_error_reverse"].abs() < 0.05).all() and (base_only["class"] == "only:base").all()
    # the latent_scaling rule (no delta-norm cut) agrees on these latents
    ls_classes = classify(table, "base", "chat", "latent_scaling", SelectionThresholds())
    assert (ls_classes[chat_only.index] == "only:chat").all()
    assert (ls_classes[weaker.index] != "only:chat").all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_counts"]["only:chat"] == int((table["class"] == "only:chat").sum()) >= 3
    assert summary["evals"]["per_model"]["chat"]["fve"] > 0.9
    for name in ("latents.csv", "examples.jsonl", "report.html", "delta_norm_hist.png", "nu_scatter.png",
                 "cos_sim_shared.png"):
        assert (out / name).is_file(), name


def test_table_matches_direct_computation_three_models(tmp_path: Path) -> None:
    """N = 3, pair chosen by name, per-model scaling != 1: every column against a one-shot
    computation in the normalised space."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(20, 9, 3, 5, generator=gen) * torch.tensor([1.0, 2.0, 0.5])[None, None, :, None]
    tokens = torch.randint(3, 40, (20, 9), generator=gen)
    included = torch.ones(20, 9, dtype=torch.bool)
    meta = write_sequence_cache(tmp_path / "cache", acts, tokens, included, shard_tokens=64,
                                model_names=["base", "chat", "rl"])
    cc = random_crosscoder(3, 5, d_sae=12, seed=4, scaling=[1.3, 0.6, 2.2], model_names=["base", "chat", "rl"])
    cfg = AnalysisConfig(pair=["rl", "base"], batch_tokens=37, latent_chunk_size=5, progress=False)
    result = analyze(cc, tmp_path / "out", cfg, activations=tmp_path / "cache")
    table = result.table

    x = acts[meta["sequence"], meta["position"]]
    with torch.no_grad():
        f = cc.encode(x)
        recon = cc.decode_normalized(f).unflatten(-1, (3, 5))
    x_norm = x * cc.activation_scaling_factors[None, :, None]
    first, second = 2, 0
    torch.testing.assert_close(torch.tensor(table["delta_norm"].to_numpy()).float(),
                               cc.relative_decoder_norms(first, second).float())
    torch.testing.assert_close(torch.tensor(table["cos_sim"].to_numpy()).float(), cc.decoder_cosine(first, second))
    norms = cc.decoder_norms()
    for m, name in enumerate(["base", "chat", "rl"]):
        torch.testing.assert_close(torch.tensor(table[f"dec_norm_{name}"].to_numpy()).float(), norms[:, m])
    torch.testing.assert_close(torch.tensor(table["freq"].to_numpy()).float(), (f > 0).float().mean(0))
    torch.testing.assert_close(torch.tensor(table["max_act"].to_numpy()).float(), f.max(0).values)
    ls = compute_latent_scaling(cc.W_dec.detach().unflatten(-1, (3, 5)), f, x_norm, recon, pair=(first, second))
    for column, want in (("nu_error", ls.nu_error), ("nu_reconstruction", ls.nu_reconstruction),
                         ("nu_error_reverse", ls.nu_error_reverse)):
        got = torch.tensor(table[column].to_numpy())
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got[~got.isnan()], want[~want.isnan()], rtol=1e-5, atol=1e-6)
    ranked = table.dropna(subset=["nu_error"]).sort_values("nu_error")
    assert ranked["nu_error_rank"].tolist() == list(range(1, len(ranked) + 1))
    assert table["class"].tolist() == classify(table, "rl", "base", "minder", SelectionThresholds()).tolist()

    summary = result.summary
    assert summary["pair"] == {"first": "rl", "second": "base", "indices": [2, 0]}
    assert summary["n_tokens"] == x.shape[0] and summary["token_budget"] is None
    mse = (recon - x_norm).pow(2).sum(-1).mean(0)
    var = (x_norm - x_norm.mean(0)).pow(2).sum(-1).mean(0)
    for m, name in enumerate(["base", "chat", "rl"]):
        assert summary["evals"]["per_model"][name]["fve"] == pytest.approx(float(1 - mse[m] / var[m]), rel=1e-4)
    assert summary["evals"]["l0"] == pytest.approx(float((f > 0).sum(-1).float().mean()), rel=1e-6)
    csv = pd.read_csv(tmp_path / "out" / "latents.csv")
    assert list(csv.columns) == list(table.columns) and csv["class"].tolist() == table["class"].tolist()
    assert sum(summary["class_counts"].values()) == 12


def test_token_budget_limits_the_pass(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(10, 8, 2, 4, generator=gen)
    meta = write_sequence_cache(tmp_path / "cache", acts, torch.zeros(10, 8, dtype=torch.long),
                                torch.ones(10, 8, dtype=torch.bool), shard_tokens=30)
    cc = random_crosscoder(2, 4, d_sae=6, seed=1)
    result = analyze(cc, tmp_path / "out", AnalysisConfig(n_tokens=45, batch_tokens=20, progress=False),
                     activations=tmp_path / "cache", make_report=False)
    with torch.no_grad():
        f = cc.encode(acts[meta["sequence"], meta["position"]][:45])
    assert result.summary["n_tokens"] == 45 and result.summary["token_budget"] == 45
    torch.testing.assert_close(torch.tensor(result.table["freq"].to_numpy()).float(), (f > 0).float().mean(0))


def test_live_models(tmp_path: Path) -> None:
    """Live source: BOS excluded from counts, CE/KL per model in the summary, examples from
    whole sequences."""
    store = FakeStore(list(tiny_pair()), n_batches=2, batch=3, ctx=10)
    cc = random_crosscoder(2, 32, d_sae=40, seed=5, bias=-0.3)
    cfg = AnalysisConfig(window=2, n_top_examples=3, ce_eval_tokens=20, progress=False)
    result = analyze(cc, tmp_path / "out", cfg, source=LiveSource(store), make_report=False)
    summary = result.summary
    assert summary["n_tokens"] == 2 * 3 * 9
    per_model = summary["evals"]["per_model"]
    for name in ("base", "chat"):
        assert {"ce_clean", "ce_spliced", "ce_zero_ablation", "ce_recovered", "kl_spliced"} <= set(per_model[name])
        # one batch reaches the CE budget; positions 1..8 of each window predict a next token
        assert per_model[name]["n_positions"] == 3 * 8
    tokens = store.batches.flatten(0, 1)
    acts = torch.cat([store.paired_activations(b) for b in store.batches]).flatten(0, 1)
    with torch.no_grad():
        f = cc.encode(acts).unflatten(0, tokens.shape)
    f[:, 0] = 0  # BOS rows are not counted
    record = json.loads((tmp_path / "out" / "examples.jsonl").read_text().splitlines()[7])
    j = record["latent"]
    best = torch.topk(f[:, :, j].flatten(), 3)
    for example, value, index in zip(record["top"], best.values, best.indices):
        seq, pos = divmod(int(index), 10)
        assert example["value"] == pytest.approx(float(value), rel=1e-5)
        assert (example["sequence"], example["position"]) == (seq, pos)
        lo = max(0, pos - 2)
        assert example["tokens"] == [f"[{int(t)}]" for t in tokens[seq, lo : pos + 3]]
        assert example["acts"] == pytest.approx(f[seq, lo : pos + 3, j].tolist(), rel=1e-5, abs=1e-6)


def test_config_round_trips() -> None:
    cfg = AnalysisConfig(pair=["base", "chat"], rule="latent_scaling", thresholds=SelectionThresholds(nu_error_max=0.1),
                         example_latents=[1, 2])
    again = AnalysisConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_crosscoder", "does not exist"),
        ("mismatched_cache", "expects 2 models of d_model 4"),
        ("plain_sae", "not a crosscoder"),
        ("unknown_pair", "unknown model 'sft' in --pair"),
        ("bad_threshold", "rule"),
        ("bad_latents", "example latents [99] are out of range"),
        ("missing_cache", "does not exist"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    gen = torch.Generator().manual_seed(2)
    d_model = 3 if case == "mismatched_cache" else 4
    write_sequence_cache(tmp_path / "cache", torch.randn(4, 5, 2, d_model, generator=gen),
                         torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.bool), shard_tokens=50)
    cc_dir = tmp_path / "cc"
    if case == "plain_sae":
        from sae_lens import StandardSAE, StandardSAEConfig

        StandardSAE(StandardSAEConfig(d_in=8, d_sae=4)).save_model(cc_dir)
    elif case != "missing_crosscoder":
        random_crosscoder(2, 4, d_sae=6).save_model(cc_dir)
    argv = ["analyze", "--crosscoder", str(cc_dir), "--activations", str(tmp_path / "cache"), "--out",
            str(tmp_path / "out"), "--no-progress"]
    if case == "unknown_pair":
        argv += ["--pair", "base,sft"]
    if case == "bad_threshold":
        argv += ["--rule", "delta"]
    if case == "bad_latents":
        argv += ["--example-latents", "3,99"]
    if case == "missing_cache":
        argv[4] = str(tmp_path / "no_cache")
    with pytest.raises(SystemExit) if case == "bad_threshold" else _no_raise():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    if case != "bad_threshold":
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_selection_rules_on_a_hand_made_table() -> None:
    nan = float("nan")
    table = pd.DataFrame({
        #              chat-only  shrunk   base-only  shared  lean-chat  noise-dir  dead  neg-nu
        "delta_norm": [0.97,      0.95,    0.02,      0.5,    0.7,       0.99,      0.5,  0.95],
        "nu_error": [0.05,        0.35,    nan,       0.9,    0.1,       0.9,       nan,  -3.0],
        "nu_reconstruction": [0.1, 0.2,    nan,       0.95,   0.3,       0.9,       nan,  0.1],
        "nu_error_reverse": [5.0,  3.0,    0.01,      1.1,    2.0,       0.01,      nan,  2.0],
        "nu_reconstruction_reverse": [4.0, 4.0, 0.2,  1.05,   2.0,       0.1,       nan,  2.0],
    })
    minder = classify(table, "base", "chat", "minder", SelectionThresholds()).tolist()
    assert minder == ["only:chat", "other", "only:base", "shared", "other", "other", "shared", "other"]
    by_nu = classify(table, "base", "chat", "latent_scaling", SelectionThresholds()).tolist()
    assert by_nu == ["only:chat", "other", "only:base", "shared", "only:chat", "other", "shared", "other"]
    looser = classify(table, "base", "chat", "minder", SelectionThresholds(nu_error_max=0.4, delta_norm_exclusive=0.6))
    assert looser.tolist()[:2] == ["only:chat", "only:chat"] and looser.tolist()[4] == "only:chat"


def test_analyze_with_a_run_config_runs_the_models(live_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config: the real paired store on the tiny Gemma-2 pair; BOS excluded, CE/KL per
    model, examples decoded to text by the models' tokenizer."""
    cfg = live_config()
    cfg.save(tmp_path / "run.json")
    random_crosscoder(2, 32, d_sae=48, seed=3, bias=-0.2, model_names=["base", "ft"]).save_model(tmp_path / "cc")
    code = main(["analyze", "--crosscoder", str(tmp_path / "cc"), "--config", str(tmp_path / "run.json"), "--out",
                 str(tmp_path / "out"), "--n-tokens", "150", "--ce-eval-tokens", "40", "--no-progress", "--no-report"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["source"]["kind"] == "live" and summary["n_tokens"] == 150
    for name in ("base", "ft"):
        evals = summary["evals"]["per_model"][name]
        assert evals["n_positions"] >= 40 and evals["kl_spliced"] > 0 and evals["ce_clean"] > 0
    records = [json.loads(line) for line in (tmp_path / "out" / "examples.jsonl").read_text().splitlines()]
    tokens = [t for r in records for e in r["top"] for t in e["tokens"]]
    assert tokens and not any(t.startswith("[") and t.endswith("]") for t in tokens)
    centers = [e["tokens"][e["center"]] for r in records for e in r["top"]]
    assert "<bos>" not in centers  # excluded tokens are context, never examples


def test_nan_activations_stop_the_pass(tmp_path: Path) -> None:
    acts = torch.randn(6, 5, 2, 4)
    acts[4, 2, 1, 3] = float("nan")
    write_sequence_cache(tmp_path / "cache", acts, torch.zeros(6, 5, dtype=torch.long),
                         torch.ones(6, 5, dtype=torch.bool), shard_tokens=50)
    from sae_lens_crosscoder.errors import DataError

    with pytest.raises(DataError, match="NaN or inf"):
        analyze(random_crosscoder(2, 4), tmp_path / "out", AnalysisConfig(batch_tokens=8, progress=False),
                activations=tmp_path / "cache", make_report=False)
