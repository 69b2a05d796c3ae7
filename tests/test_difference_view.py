"""The difference view on planted pairs: an SAE on finetuned - base analysed like a
crosscoder, and joined to crosscoders that do, do not, or only partly represent the change.

The organism: 64-token sequences, d_model 16. Both models carry 10 shared features (15 %
firing each) and a template feature t on the template token (id 5, 10 % of positions); the
fine-tuned model adds 2.0 ± 0.2 times a direction u (orthogonal to the rest) at chosen
positions: 3 % of all positions at random ("independent", a feature only the fine-tune has)
or 30 % of the template positions ("template-bound", the pitfall of method.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from sae_lens import SAE

from analysis_helpers import write_sequence_cache
from sae_lens_crosscoder.analysis import AnalysisConfig, analyze
from sae_lens_crosscoder.architectures.relu import Crosscoder, CrosscoderConfig
from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.config import CrosscoderRunnerConfig
from sae_lens_crosscoder.difference import JoinThresholds, analyze_difference, raw_decoder_difference
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.runner import train

D, T, TEMPLATE = 16, 64, 5
NAMES = ["pt", "ft"]
ROOT = Path(__file__).resolve().parents[1]


def basis() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(123)))[0].T
    return q[:10], q[10], q[11]  # shared, template t, change u


def organism(n_seq: int, seed: int, change: str | None) -> dict[str, torch.Tensor]:
    """Paired activations [n_seq, T, 2, D], tokens, and the change mask; change is
    "independent", "template" or None."""
    gen = torch.Generator().manual_seed(seed)
    shared, t, u = basis()
    coef = (torch.rand(n_seq, T, 10, generator=gen) < 0.15) * (1 + 0.2 * torch.randn(n_seq, T, 10, generator=gen))
    tokens = torch.randint(10, 50, (n_seq, T), generator=gen)
    template = torch.rand(n_seq, T, generator=gen) < 0.10
    tokens[template] = TEMPLATE
    base = coef @ shared + template[..., None] * t
    finetuned = base + 0.02 * torch.randn(n_seq, T, D, generator=gen)
    if change == "independent":
        where = torch.rand(n_seq, T, generator=gen) < 0.03
    elif change == "template":
        where = template & (torch.rand(n_seq, T, generator=gen) < 0.3)
    else:
        where = torch.zeros(n_seq, T, dtype=torch.bool)
    finetuned = finetuned + where[..., None] * (2.0 + 0.2 * torch.randn(n_seq, T, 1, generator=gen)) * u
    return {"acts": torch.stack([base, finetuned], dim=2), "tokens": tokens, "where": where}


def write_cache(path: Path, data: dict[str, torch.Tensor]) -> Path:
    n_seq = data["tokens"].shape[0]
    write_sequence_cache(path, data["acts"], data["tokens"], torch.ones(n_seq, T, dtype=torch.bool),
                         shard_tokens=64_000, model_names=NAMES)
    return path


TRAINING = dict(train_batch_size_tokens=1024, training_tokens=256_000, cache_chunk_tokens=4096,
                cache_shuffle_buffer_tokens=65_536, n_batches_for_norm_estimate=4)
ANALYSIS = AnalysisConfig(batch_tokens=4096, progress=False, ce_eval_tokens=0, n_top_examples=20, n_quantiles=4,
                          examples_per_quantile=5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Caches, a difference SAE and two BatchTopK crosscoders (trained with and without the
    change), and the analysis of the first; built once."""
    root = tmp_path_factory.mktemp("difference_view")
    out: dict[str, Any] = {"root": root}
    for name, n_seq, seed, change in (("train", 2000, 0, "independent"), ("nochange", 2000, 1, None),
                                      ("eval", 500, 2, "independent"), ("eval_template", 500, 3, "template"),
                                      ("eval_nochange", 500, 4, None)):
        data = organism(n_seq, seed, change)
        out[name] = write_cache(root / name, data)
        out[f"{name}_where"] = data["where"]
    train(CrosscoderRunnerConfig(mode="difference", architecture="batchtopk", d_sae=8, k=0.04,
                                 cached_activations_path=str(out["train"]), output_path=str(root / "diff"), **TRAINING))
    for name, cache in (("cc", out["train"]), ("cc_nochange", out["nochange"])):
        train(CrosscoderRunnerConfig(architecture="batchtopk_crosscoder", d_sae=32, k=2,
                                     cached_activations_path=str(cache), output_path=str(root / name), **TRAINING))
    analyze(root / "cc", root / "cc_analysis", ANALYSIS, activations=out["eval"])
    out.update(diff=root / "diff", cc=root / "cc", cc_nochange=root / "cc_nochange", cc_analysis=root / "cc_analysis")
    return out


def rows_of(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in mask.nonzero().tolist()}  # (sequence, position)


def test_difference_latent_fires_exactly_on_the_planted_positions(planted: dict[str, Any], tmp_path: Path) -> None:
    result = analyze_difference(planted["diff"], tmp_path / "out", ANALYSIS, activations=planted["eval"])
    table, where = result.table, planted["eval_where"]
    change = int(table["freq"].idxmax())
    # freq = |fires| / n and every example sits on a planted position: precision = recall = 1
    assert table.loc[change, "freq"] == pytest.approx(float(where.float().mean()), abs=1e-9)
    planted_rows = rows_of(where)
    record = next(json.loads(line) for line in (tmp_path / "out" / "examples.jsonl").read_text().splitlines()
                  if json.loads(line)["latent"] == change)
    examples = record["top"] + [e for q in record["quantiles"] for e in q["examples"]]
    assert len(examples) == 40 and all((e["sequence"], e["position"]) in planted_rows for e in examples)
    # nothing else fires beyond noise
    assert table.drop(index=change)["freq"].sum() < 1e-3
    assert table.loc[change, "class"] == "difference" and set(table.drop(index=change)["class"]) <= {"dead", "difference"}
    summary = result.summary
    assert summary["difference_of"] == {"base": "pt", "finetuned": "ft"} and summary["pair"]["indices"] == [0, 1]
    assert summary["evals"]["per_model"]["difference SAE"]["fve"] > 0.9
    assert summary["evals"]["l0"] == pytest.approx(float(where.float().mean()), abs=1e-3)

    # held-out tokens straight through the saved SAE: the same answer
    sae = SAE.load_from_disk(planted["diff"])
    data = organism(300, 7, "independent")
    fires = sae.encode(data["acts"][..., 1, :] - data["acts"][..., 0, :])[..., change] > 0
    hit = (fires & data["where"]).sum()
    assert hit / fires.sum() == 1.0 and hit / data["where"].sum() == 1.0

    # unchanged content: no difference latent is active
    quiet = analyze_difference(planted["diff"], tmp_path / "quiet", ANALYSIS, activations=planted["eval_nochange"],
                               join_crosscoder=planted["cc"])
    assert quiet.table["freq"].sum() < 1e-3 and quiet.summary["class_counts"]["difference"] <= 1
    assert quiet.summary["join"]["verdict_counts"]["unfired"] >= 7  # and the join copes with (nearly) nothing


def test_join_finds_the_exclusive_crosscoder_latent(planted: dict[str, Any], tmp_path: Path) -> None:
    """The change is a feature only the fine-tune has: the BatchTopK crosscoder learns it as
    only:ft, and the join points at exactly that latent."""
    result = analyze_difference(planted["diff"], tmp_path / "out", ANALYSIS, activations=planted["eval"],
                                join_crosscoder=planted["cc"], crosscoder_analysis=planted["cc_analysis"])
    cc_table = pd.read_parquet(planted["cc_analysis"] / "latents.parquet")
    exclusive = cc_table.loc[cc_table["class"] == "only:ft", "latent"].tolist()
    assert len(exclusive) == 1
    row = result.table.loc[result.table["freq"].idxmax()]
    assert row["join_verdict"] == "match" and row["join_latent"] == exclusive[0]
    assert row["join_cos"] > 0.99 and row["join_jaccard"] > 0.99 and row["join_carried"] > 0.95
    assert row["join_delta_norm"] > 0.95 and row["join_class"] == "only:ft"
    assert row["join_best_cos_latent"] == row["join_best_jaccard_latent"] == row["join_latent"]
    assert result.summary["join"]["matched_crosscoder_latents"] == exclusive
    assert result.summary["join"]["verdict_counts"]["match"] == 1
    assert result.summary["evals"]["per_model"]["crosscoder"]["fve"] > 0.9
    pairs = pd.read_parquet(tmp_path / "out" / "join.parquet")
    chosen = pairs[pairs["verdict_latent"]]
    assert chosen[["diff_latent", "cc_latent"]].values.tolist() == [[int(row["latent"]), exclusive[0]]]
    assert chosen["cc_class"].tolist() == ["only:ft"] and chosen["cos_rank"].tolist() == [1]


def test_join_reports_no_match_for_a_crosscoder_trained_without_the_change(planted: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    result = analyze_difference(planted["diff"], tmp_path / "out", ANALYSIS, activations=planted["eval"],
                                join_crosscoder=planted["cc_nochange"], make_report=False)
    row = result.table.loc[result.table["freq"].idxmax()]
    assert row["join_verdict"] == "none" and row["join_latent"] == -1
    assert abs(row["join_explained"]) < 0.05 and abs(row["join_best_carried"]) < 0.05
    assert result.summary["join"]["verdict_counts"]["match"] == 0
    assert result.summary["evals"]["per_model"]["crosscoder"]["fve"] < 0.1


def absorbing_crosscoder(scaling: tuple[float, float] = (2.0, 0.5), share: float = 0.3,
                         detector: bool = False) -> Crosscoder:
    """By hand: latents 0-9 read the shared features, latent 10 the template feature; the
    fine-tuned decoder of latent 10 adds share * 2.0 * u (the template-bound change averaged
    over all template tokens). Weights in the normalised space of unequal scaling factors,
    where the decoder difference does not point along u: only the raw one does. With
    `detector`, latent 11 fires on exactly the changed tokens (it reads u in the fine-tuned
    block) but its decoder difference is a hundredth of u: it marks the change without
    reconstructing it."""
    shared, t, u = basis()
    s0, s1 = scaling
    cfg = CrosscoderConfig(d_in=2 * D, d_sae=12 if detector else 11, n_models=2, dtype="float32", device="cpu")
    cfg.metadata.model_names = list(NAMES)
    cc = Crosscoder(cfg)
    reads = torch.cat([shared, t[None]])  # [11, D]
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_enc[:D, :11] = (reads / s0).T  # the base block: latent k = <x_base, read_k> >= 0
        cc.b_enc.fill_(-1e-3)  # float round-off leaves ~1e-8 on orthogonal directions
        cc.b_dec.zero_()
        dec = torch.zeros(cfg.d_sae, 2, D)
        dec[:11] = torch.stack([reads * s0, reads * s1], dim=1)
        dec[10, 1] += s1 * share * 2.0 * u
        if detector:
            cc.W_enc[D:, 11] = u / s1
            cc.b_enc[11] = -0.5  # above the fine-tune's 0.02 noise, below the change's 2.0
            dec[11, 1] = s1 * 0.01 * u
        cc.W_dec.copy_(dec.flatten(1))
        cc.set_activation_scaling_factors(list(scaling))
    return cc


def test_join_sees_a_change_absorbed_into_a_template_latent(planted: dict[str, Any], tmp_path: Path) -> None:
    """The change acts on 30 % of the template tokens and the crosscoder carries it in the
    template latent: no match (it fires on every template token), verdict absorbed, with
    cos 1 and carried share 0.3 in raw space."""
    cc = absorbing_crosscoder()
    _, _, u = basis()
    delta, _ = raw_decoder_difference(cc, 0, 1)
    assert torch.allclose(delta[10], 0.6 * u, atol=1e-6) and delta[:10].abs().max() < 1e-6
    normalised = cc.W_dec.detach().unflatten(-1, (2, D))
    assert torch.nn.functional.cosine_similarity(normalised[10, 1] - normalised[10, 0], u, dim=0) < 0.25

    result = analyze_difference(planted["diff"], tmp_path / "out", ANALYSIS, activations=planted["eval_template"],
                                join_crosscoder=cc, make_report=False)
    row = result.table.loc[result.table["freq"].idxmax()]
    assert row["join_verdict"] == "absorbed" and row["join_latent"] == 10
    assert row["join_cos"] == pytest.approx(1.0, abs=1e-4)
    assert row["join_recall"] == 1.0 and row["join_precision"] == pytest.approx(row["join_jaccard"])
    assert 0.25 < row["join_jaccard"] < 0.35  # the change sits on about 30 % of the template tokens
    assert row["join_carried"] == pytest.approx(0.3, abs=0.01) and row["join_explained"] == pytest.approx(0.3, abs=0.01)
    # a latent that fires on exactly the changed tokens but does not reconstruct the change is
    # no match: the carried share decides, and the change stays absorbed in latent 10
    marked = analyze_difference(planted["diff"], tmp_path / "marked", ANALYSIS, activations=planted["eval_template"],
                                join_crosscoder=absorbing_crosscoder(detector=True), make_report=False)
    marked_row = marked.table.loc[row.name]
    assert marked_row["join_best_jaccard_latent"] == 11 and marked_row["join_best_jaccard"] == 1.0
    assert marked_row["join_verdict"] == "absorbed" and marked_row["join_latent"] == 10
    pairs = pd.read_parquet(tmp_path / "marked" / "join.parquet")
    detector = pairs[(pairs["diff_latent"] == row.name) & (pairs["cc_latent"] == 11)].iloc[0]
    assert detector["cos"] == pytest.approx(1.0, abs=1e-4) and detector["carried"] < 0.01
    # a stricter carried cut leaves no good match at all
    strict = analyze_difference(planted["diff"], tmp_path / "strict", ANALYSIS, activations=planted["eval_template"],
                                join_crosscoder=cc, join_thresholds=JoinThresholds(carried_min=0.5), make_report=False)
    assert strict.table.loc[row.name, "join_verdict"] == "none"


def test_cli_report_shows_both_views(planted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["analyze", "--sae", str(planted["diff"]), "--activations", str(planted["eval"]), "--out", str(out),
                 "--join-crosscoder", str(planted["cc"]), "--join-analysis", str(planted["cc_analysis"]),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert '"match": 1' in capsys.readouterr().out
    for name in ("latents.parquet", "latents.csv", "join.parquet", "join.csv", "examples.jsonl", "summary.json",
                 "difference_freq_hist.png", "join_scatter.png", "report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert "Difference SAE: ft − pt" in page and "Difference view: an SAE on ft − pt beside the crosscoder" in page
    assert "data:image/png;base64" in page and ">match<" in page and "only:ft" in page
    cc_section = planted["cc_analysis"] / "report_sections" / "40_difference_view_ft_minus_pt.html"
    assert cc_section.is_file() and "Difference view" in (planted["cc_analysis"] / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "difference" and summary["join"]["crosscoder"] == str(planted["cc"])
    if shutil.which("chromium"):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_report_render.py"), str(out / "report.html"),
                               "--screenshot", str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr


def other_pair_crosscoder(tmp_path: Path, names: list[str], d_model: int = D) -> Path:
    cfg = CrosscoderConfig(d_in=2 * d_model, d_sae=4, n_models=2, dtype="float32", device="cpu")
    cfg.metadata.model_names = names
    Crosscoder(cfg).save_model(tmp_path / "other")
    return tmp_path / "other"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other_pair", "the difference SAE is ft − pt but the crosscoder compares pt, sft (no ft); join a crosscoder "
                       "of the same pair"),
        ("other_width", "the crosscoder has d_model 8 but the difference SAE 16"),
        ("other_order", "are not the activations' (pt, ft) in the same order"),
        ("difference_as_crosscoder", "diff is a difference SAE, not a crosscoder; --join-crosscoder takes a crosscoder"),
        ("join_for_a_crosscoder", "--join-crosscoder/--join-analysis apply to difference SAEs"),
        ("analysis_without_crosscoder", "--join-analysis needs --join-crosscoder"),
        ("wrong_pair_option", "--pair ft,pt does not apply: this SAE was trained on ft − pt"),
    ],
)
def test_bad_joins_are_one_line_errors(planted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       case: str, message: str) -> None:
    sae, cc = str(planted["diff"]), None
    extra: list[str] = []
    if case == "other_pair":
        cc = other_pair_crosscoder(tmp_path, ["pt", "sft"])
    elif case == "other_width":
        cc = other_pair_crosscoder(tmp_path, NAMES, d_model=8)
    elif case == "other_order":
        cc = other_pair_crosscoder(tmp_path, ["ft", "pt"])
    elif case == "difference_as_crosscoder":
        cc = planted["diff"]
    elif case == "join_for_a_crosscoder":
        sae, cc = str(planted["cc"]), planted["cc_nochange"]
    elif case == "analysis_without_crosscoder":
        extra = ["--join-analysis", str(planted["cc_analysis"])]
    elif case == "wrong_pair_option":
        extra = ["--pair", "ft,pt"]
    argv = ["analyze", "--sae", sae, "--activations", str(planted["eval"]), "--out", str(tmp_path / "out"),
            "--no-progress", "--no-report", *extra]
    if cc is not None:
        argv += ["--join-crosscoder", str(cc)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err


def test_analysis_needs_the_pair_in_the_data(planted: dict[str, Any], tmp_path: Path) -> None:
    data = organism(20, 9, "independent")
    write_sequence_cache(tmp_path / "cache", data["acts"], data["tokens"], torch.ones(20, T, dtype=torch.bool),
                         shard_tokens=640, model_names=["pt", "it"])
    sae = SAE.load_from_disk(planted["diff"])
    sae.cfg.metadata.model_names = ["pt", "ft", "it"]  # a three-model run: its names no longer fit this cache
    with pytest.raises(CrosscoderUserError, match="trained on ft − pt but the activations hold models pt, it"):
        analyze_difference(sae, tmp_path / "out", ANALYSIS, activations=tmp_path / "cache", make_report=False)


def test_live_models_and_the_analyze_entry_point(planted: dict[str, Any], tmp_path: Path) -> None:
    """A difference SAE on two live models through the paired store interface: the
    per-latent counts equal a direct encoding of the models' activation difference on the
    counted (non-BOS) tokens. And `analyze` hands a difference SAE's directory to this pass."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from analysis_helpers import FakeStore, tiny_pair
    from sae_lens_crosscoder.analysis import LiveSource

    cfg = StandardSAEConfig(d_in=32, d_sae=12)
    cfg.metadata.difference_of = {"base": "base", "finetuned": "chat"}
    cfg.metadata.model_names = ["base", "chat"]
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 12, generator=torch.Generator().manual_seed(0)))
        sae.b_enc.fill_(-0.5)
    store = FakeStore(list(tiny_pair()))
    result = analyze_difference(sae, tmp_path / "live", ANALYSIS, source=LiveSource(store), make_report=False)
    count, n = torch.zeros(12), 0
    with torch.no_grad():
        for tokens in store.iter_token_batches():
            acts = store.paired_activations(tokens)[store.token_mask(tokens)]
            count += (sae.encode(acts[:, 1] - acts[:, 0]) > 0).sum(0)
            n += acts.shape[0]
    assert result.summary["n_tokens"] == n and result.summary["source"]["kind"] == "live"
    assert 0 < count.sum() < 12 * n
    assert (result.table["freq"] * n).round().tolist() == count.tolist()

    routed = analyze(planted["diff"], tmp_path / "routed", ANALYSIS, activations=planted["eval"], make_report=False)
    assert routed.summary["kind"] == "difference" and "join_verdict" not in routed.table.columns


def test_saved_again_the_sae_is_still_a_difference_sae(planted: dict[str, Any], tmp_path: Path) -> None:
    """SAE.load_from_disk and save_model keep metadata.difference_of, which is how analyze
    recognises the SAE, and the reloaded copy analyses identically."""
    SAE.load_from_disk(planted["diff"]).save_model(tmp_path / "again")
    first = analyze(planted["diff"], tmp_path / "a", ANALYSIS, activations=planted["eval"], make_report=False)
    again = analyze(tmp_path / "again", tmp_path / "b", ANALYSIS, activations=planted["eval"], make_report=False)
    assert again.summary["difference_of"] == {"base": "pt", "finetuned": "ft"}
    pd.testing.assert_frame_equal(first.table, again.table)
