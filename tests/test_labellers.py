"""Rule and manual labellers, latent selection, the labels table, and the `label` command."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sae_lens_crosscoder.cli import main
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.examples import LatentExamples, read_examples
from sae_lens_crosscoder.labelling.labels import Label, labels_frame, read_labels, write_labels
from sae_lens_crosscoder.labelling.manual import ManualLabeller
from sae_lens_crosscoder.labelling.rules import RuleLabeller
from sae_lens_crosscoder.labelling.selection import AnalysisDir, SelectionRule, select_latents
from sae_lens_crosscoder.labelling.synthetic import SyntheticLatent, parse_example, write_synthetic_analysis
from sae_lens_crosscoder.labelling.taxonomy import Category, Taxonomy, get_taxonomy

MODELS = ["base", "chat"]
LATENTS = [
    # fine-tuned-only under Latent Scaling (nu_error < 0.2, nu_reconstruction < 0.5)
    SyntheticLatent(1, ["Please *translate* this sentence", "say it *en* *français* now", "the word *bonjour*",
                        "a *translation* of the text"], "only:chat", 0.05, 0.1, 0.95),
    SyntheticLatent(2, ["x = *def* foo ( ) :", "then *return* x", "call *print(* value", "*import* numpy"],
                    "only:chat", 0.10, 0.3, 0.97),
    SyntheticLatent(3, ["the *weather* was fine", "a *blue* car", "some *chair* here"], "only:chat", 0.15, 0.2, 0.8),
    SyntheticLatent(4, [], "only:chat", 0.01, 0.01, 0.99),  # no examples collected
    # excluded: nu_reconstruction too high; and a shared one
    SyntheticLatent(5, ["I *refuse* to help with *weapons*"], "other", 0.1, 0.7, 0.92),
    SyntheticLatent(6, ["hello *world*"], "shared", 0.9, 0.95, 0.5),
    SyntheticLatent(7, ["base *only*"], "only:base", 1.0, 1.0, 0.02, nu_error_reverse=0.1, nu_reconstruction_reverse=0.2),
]


@pytest.fixture
def analysis(tmp_path: Path) -> Path:
    return write_synthetic_analysis(tmp_path / "analysis", MODELS, LATENTS)


def test_synthetic_analysis_has_the_documented_shape(analysis: Path) -> None:
    frame = pd.read_parquet(analysis / "latents.parquet")
    assert {"latent", "dec_norm_base", "dec_norm_chat", "delta_norm", "cos_sim", "freq", "max_act", "nu_error",
            "nu_reconstruction", "nu_error_reverse", "nu_reconstruction_reverse", "class"} <= set(frame.columns)
    ex = read_examples(analysis / "examples.jsonl", [1, 2])
    assert set(ex) == {1, 2}
    first = ex[1].top[0]
    assert first.tokens == ["Please", " translate", " this", " sentence"] and first.acts == [0, 1, 0, 0]
    assert first.center == 1 and first.value == 1.0
    assert len(ex[1].top) == 2 and len(ex[1].quantiles[0].examples) == 2


def test_selection_rules(analysis: Path) -> None:
    a = AnalysisDir(analysis)
    assert a.model_names() == MODELS
    assert select_latents(a, SelectionRule()) == [4, 1, 2, 3]  # by nu_error
    assert select_latents(a, SelectionRule(max_latents=2)) == [4, 1]
    assert select_latents(a, SelectionRule(delta_norm_min=0.9)) == [4, 1, 2]
    assert select_latents(a, SelectionRule(rule="delta_norm")) == [4, 2, 1, 5]
    assert select_latents(a, SelectionRule(rule="delta_norm", model="base")) == [7]
    assert select_latents(a, SelectionRule(rule="class")) == [4, 1, 2, 3]
    assert select_latents(a, SelectionRule(rule="class", model="base")) == [7]
    assert select_latents(a, SelectionRule(rule="all")) == [1, 2, 3, 4, 5, 6, 7]
    assert select_latents(a, SelectionRule(model="base")) == [7]  # the reverse ratios
    assert select_latents(a, SelectionRule(model="base", delta_norm_min=0.99)) == []
    with pytest.raises(CrosscoderUserError, match="not in this analysis"):
        select_latents(a, SelectionRule(model="gpt"))
    assert SelectionRule.from_dict(SelectionRule(max_latents=3).to_dict()) == SelectionRule(max_latents=3)


def test_rule_labeller_scores_and_fallback(analysis: Path) -> None:
    tax = get_taxonomy("capabilities-v1")
    examples = read_examples(analysis / "examples.jsonl")
    labels = RuleLabeller().label([examples[1], examples[2], examples[3], LatentExamples(4)], tax)
    by: dict[int, list[Label]] = {}
    for lab in labels:
        by.setdefault(lab.latent, []).append(lab)
    assert by[1][0].category == "multilingual" and by[1][0].confidence == 1.0
    assert by[2][0].category == "code_generation"
    assert [(lab.category, lab.status) for lab in by[3]] == [("other", "labelled")]
    assert "no lexicon reached" in by[3][0].reason
    assert by[4][0].status == "failed" and by[4][0].reason == "no activating examples"
    assert all(lab.labeller == "rules" and lab.taxonomy == "capabilities-v1" for lab in labels)


def test_rule_score_is_the_matched_activation_share() -> None:
    tax = Taxonomy("t", (Category("greet", "", keywords=["hello"]), Category("other", "")))
    # activation 3 on "hello" (matches), 1 on "cat" four words away (context 2: no match) -> 3 / 4
    latent = LatentExamples(9, top=[parse_example("*hello*:3 there my dear *cat*:1")])
    assert RuleLabeller().scores(latent, tax) == {"greet": 0.75}
    # with a wide context "cat"'s window reaches "hello"
    assert RuleLabeller(context=4).scores(latent, tax) == {"greet": 1.0}
    labels = RuleLabeller(threshold=0.8).label([latent], tax)
    assert [(lab.category, lab.confidence) for lab in labels] == [("other", 0.25)]


def test_manual_labels(tmp_path: Path) -> None:
    tax = get_taxonomy("capabilities-v1")
    csv = tmp_path / "labels.csv"
    csv.write_text("latent,category,confidence,note\n"
                   "1,instruction following;Math,0.8,looks like both\n"
                   "2,code_generation,,\n"
                   "99,safety,1,not in the set\n")
    labeller = ManualLabeller(csv)
    labels = labeller.label([LatentExamples(1), LatentExamples(2), LatentExamples(3)], tax)
    got = [(lab.latent, lab.category, lab.confidence, lab.status) for lab in labels]
    assert got == [(1, "instruction_following", 0.8, "labelled"), (1, "math", 0.8, "labelled"),
                   (2, "code_generation", 1.0, "labelled"), (3, None, 0.0, "failed")]
    assert labels[0].explanation == "looks like both" and labels[0].labeller == "manual:labels.csv"
    assert "no manual label" in labels[3].reason and labeller.ignored == 1


@pytest.mark.parametrize("content, message", [
    ("id,cat\n1,math\n", "needs a header with 'latent' and 'category'"),
    ("latent,category\nx,math\n", r"labels.csv:2: latent 'x' is not an integer"),
    ("latent,category\n1,math\n2,cooking\n", r"labels.csv:3: 'cooking' is not a category"),
    ("latent,category,confidence\n1,math,1.5\n", r"confidence 1.5 must lie in \[0, 1\]"),
    ("latent,category\n1,\n", "empty category"),
])
def test_malformed_csv(tmp_path: Path, content: str, message: str) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(content)
    with pytest.raises(CrosscoderUserError, match=message):
        ManualLabeller(csv).label([LatentExamples(1)], get_taxonomy("capabilities-v1"))


def test_labels_table_round_trip(tmp_path: Path) -> None:
    labels = [Label(2, "math", 0.5, "x", explanation="e"), Label.failure(1, "x", "boom")]
    path = write_labels(tmp_path / "l.parquet", labels, {"set": "demo"})
    frame = read_labels(path)
    assert list(frame["latent"]) == [1, 2] and frame.attrs["provenance"] == {"set": "demo"}
    from sae_lens_crosscoder.labelling.labels import labels_from_frame

    assert sorted(labels_from_frame(frame), key=lambda lab: lab.latent) == sorted(labels, key=lambda lab: lab.latent)
    bad = labels_frame(labels)
    bad.loc[0, "confidence"] = 2.0
    with pytest.raises(CrosscoderUserError, match=r"confidences must lie in \[0, 1\]"):
        write_labels(tmp_path / "bad.parquet", bad)
    with pytest.raises(CrosscoderUserError, match="no labels table"):
        read_labels(tmp_path / "nope.parquet")


def test_label_command_rules(analysis: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--analysis", str(analysis), "--taxonomy", "capabilities-v1", "--labeller", "rules"]) == 0
    assert "labelled 3/4 latents (1 failed)" in capsys.readouterr().out
    frame = read_labels(analysis / "labels.parquet")
    assert sorted(frame["latent"].unique()) == [1, 2, 3, 4]
    assert frame.attrs["provenance"]["selection"]["rule"] == "latent_scaling"
    assert frame.attrs["provenance"]["labeller"]["threshold"] == 0.3
    fragment = (analysis / "report_sections" / "60_labels_labels.html").read_text()
    assert "Latents by category" in fragment and "multilingual / linguistic processing (1)" in fragment
    assert "no activating examples" in fragment


def test_label_command_manual_and_explicit_latents(analysis: Path, tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("latent,category\n6,other\n7,safety\n")
    out = tmp_path / "manual.parquet"
    assert main(["label", "--analysis", str(analysis), "--labeller", "manual", "--csv", str(csv),
                 "--latents", "6,7", "--out", str(out), "--no-report"]) == 0
    frame = read_labels(out)
    assert list(zip(frame["latent"], frame["category"])) == [(6, "other"), (7, "safety")]


def test_label_command_errors(analysis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["label", "--analysis", str(tmp_path / "missing"), "--labeller", "rules"]) == 2
    assert "analysis directory" in capsys.readouterr().err
    assert main(["label", "--analysis", str(analysis), "--taxonomy", "capabilites-v1"]) == 2
    assert "did you mean 'capabilities-v1'" in capsys.readouterr().err
    assert main(["label", "--analysis", str(analysis), "--labeller", "manual"]) == 2
    assert "--csv" in capsys.readouterr().err
    assert main(["label", "--analysis", str(analysis), "--nu-error-max", "0.001"]) == 2
    assert "picks no latents" in capsys.readouterr().err
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["label", "--analysis", str(analysis), "--labeller", "llm", "--llm-model", "m"]) == 2
    assert "no API key" in capsys.readouterr().err
