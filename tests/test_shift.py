"""Category shift: hand-computed counts and shares, the p_A = 0 cases, and bootstrap intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.labels import Label, labels_frame
from sae_lens_crosscoder.labelling.shift import ReferenceValue, category_shift, read_shift, write_shift
from sae_lens_crosscoder.labelling.taxonomy import Category, Taxonomy

TAX = Taxonomy(
    "toy",
    (
        Category("a", "alpha"),
        Category("b", "beta"),
        Category("tech", "technical"),
        Category("code", "code", parent="tech"),
        Category("math", "math", parent="tech"),
        Category("rare", "only in B"),
        Category("other", "nothing fits"),
    ),
)


def frame(spec: dict[int, list[tuple[str, float]] | None]) -> pd.DataFrame:
    """latent -> [(category, confidence)], None = a failed latent."""
    labels = []
    for latent, cats in spec.items():
        if cats is None:
            labels.append(Label.failure(latent, "test", "boom"))
        else:
            labels += [Label(latent, c, p, "test") for c, p in cats]
    return labels_frame(labels)


# A: 4 labelled latents, 5 labels, one failure
A = frame({
    0: [("a", 1.0)],
    1: [("a", 0.5), ("b", 1.0)],
    2: [("code", 1.0)],
    3: [("other", 1.0)],
    4: None,
})
# B: 5 labelled latents, 8 labels
B = frame({
    10: [("a", 1.0)],
    11: [("a", 1.0), ("code", 0.5), ("math", 1.0)],
    12: [("b", 1.0)],
    13: [("rare", 0.8)],
    14: [("a", 0.2), ("b", 1.0)],
})


def row(df: pd.DataFrame, cat: str) -> pd.Series:
    return df.set_index("category").loc[cat]


def test_per_latent_counts_shares_and_relative_change() -> None:
    df = category_shift(A, B, TAX, n_bootstrap=0, names=("it", "SimPO"))
    # A: a in {0,1} -> 2/4; b {1} -> 1/4; code {2}; tech (parent) {2}; other {3}
    # B: a {10,11,14} -> 3/5; b {12,14} -> 2/5; code {11}; math {11}; tech {11}; rare {13}
    expected = {"a": (2, 3, 2 / 4, 3 / 5), "b": (1, 2, 1 / 4, 2 / 5), "code": (1, 1, 1 / 4, 1 / 5),
                "math": (0, 1, 0, 1 / 5), "tech": (1, 1, 1 / 4, 1 / 5), "rare": (0, 1, 0, 1 / 5),
                "other": (1, 0, 1 / 4, 0)}
    for cat, (ca, cb, pa, pb) in expected.items():
        r = row(df, cat)
        assert (r.count_a, r.count_b) == (ca, cb), cat
        assert r.share_a == pytest.approx(pa) and r.share_b == pytest.approx(pb), cat
        assert r.n_a == 4 and r.n_b == 5
    assert row(df, "a").rel_change == pytest.approx((3 / 5 - 2 / 4) / (2 / 4))  # +20 %
    assert row(df, "b").rel_change == pytest.approx(0.6)  # +60 %
    assert row(df, "other").rel_change == pytest.approx(-1.0)
    assert row(df, "math").rel_change == math.inf and "relative change infinite" in row(df, "math").note
    assert set(df["share"]) == {"per_latent"}
    d = df.attrs["definitions"]
    assert d["n_failed_a"] == 1 and d["n_latents_a"] == 4 and d["n_labels_b"] == 8 and d["a"] == "it"
    assert "labelled latents" in d["share_definition"]


def test_per_label_and_confidence_weights() -> None:
    df = category_shift(A, B, TAX, share="per_label", n_bootstrap=0)
    # A's 5 labels: a 2, b 1, code 1, other 1; B's 8: a 3, b 2, code 1, math 1, rare 1
    assert df.attrs["definitions"]["n_labels_b"] == 8 and df.attrs["definitions"]["n_labels_a"] == 5
    assert row(df, "a").share_a == pytest.approx(2 / 5) and row(df, "a").share_b == pytest.approx(3 / 8)
    assert row(df, "tech").count_b == 2 and row(df, "tech").share_b == pytest.approx(2 / 8)
    assert df[df["parent"] == ""]["share_b"].sum() == pytest.approx(1.0)  # top-level shares sum to one per label

    dfc = category_shift(A, B, TAX, share="per_latent", weight="confidence", n_bootstrap=0)
    assert row(dfc, "a").share_a == pytest.approx((1.0 + 0.5) / 4)
    assert row(dfc, "a").share_b == pytest.approx((1.0 + 1.0 + 0.2) / 5)
    assert row(dfc, "tech").share_b == pytest.approx(1.0 / 5)  # max(code 0.5, math 1.0)
    assert row(dfc, "a").count_b == 3  # counts stay counts

    dfl = category_shift(A, B, TAX, share="per_label", weight="confidence", n_bootstrap=0)
    assert row(dfl, "a").share_b == pytest.approx(2.2 / (1 + 2.5 + 1 + 0.8 + 1.2))


def test_min_confidence_turns_orphans_into_other() -> None:
    df = category_shift(A, B, TAX, min_confidence=0.6, n_bootstrap=0)
    # B: 13 (rare 0.8) stays; 14 keeps b only; 11 loses code. A: 1 keeps b only.
    assert row(df, "a").count_a == 1 and row(df, "a").count_b == 2
    assert row(df, "code").count_b == 0 and row(df, "math").count_b == 1
    only_low = frame({1: [("a", 0.1)], 2: [("b", 0.9)]})
    d2 = category_shift(only_low, only_low, TAX, min_confidence=0.5, n_bootstrap=0)
    assert row(d2, "other").count_a == 1 and row(d2, "a").count_a == 0


def test_both_absent_is_nan_with_note() -> None:
    df = category_shift(A, A, TAX, n_bootstrap=50)
    r = row(df, "rare")
    assert math.isnan(r.rel_change) and "absent from both" in r.note
    assert row(df, "a").rel_change == 0.0


def test_bootstrap_contains_point_and_shrinks_with_more_latents() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int, p: dict[str, float], offset: int) -> pd.DataFrame:
        cats = rng.choice(list(p), size=n, p=list(p.values()))
        return frame({offset + i: [(c, 1.0)] for i, c in enumerate(cats)})

    pa = {"a": 0.3, "b": 0.3, "code": 0.2, "other": 0.2}
    pb = {"a": 0.5, "b": 0.2, "code": 0.1, "other": 0.2}
    small = category_shift(sample(60, pa, 0), sample(60, pb, 1000), TAX, n_bootstrap=1000, seed=3)
    big = category_shift(sample(2000, pa, 0), sample(2000, pb, 10000), TAX, n_bootstrap=1000, seed=3)
    for df in (small, big):
        for cat in ("a", "b", "code", "other", "tech"):
            r = row(df, cat)
            for key in ("share_a", "share_b", "diff", "rel_change"):
                assert r[f"{key}_lo"] <= r[key] <= r[f"{key}_hi"], (cat, key)
    for cat in ("a", "b", "code"):
        width_small = row(small, cat).rel_change_hi - row(small, cat).rel_change_lo
        width_big = row(big, cat).rel_change_hi - row(big, cat).rel_change_lo
        assert width_big < width_small / 3, cat  # ~1/sqrt(33) in theory
    # the large-sample interval covers the true relative change of "a": (0.5 - 0.3) / 0.3
    assert row(big, "a").rel_change_lo < 2 / 3 < row(big, "a").rel_change_hi
    # determinism
    again = category_shift(sample(5, pa, 0), sample(5, pb, 50), TAX, n_bootstrap=200, seed=9)
    assert again.attrs["definitions"]["seed"] == 9


def test_same_seed_same_intervals() -> None:
    one = category_shift(A, B, TAX, n_bootstrap=300, seed=4)
    two = category_shift(A, B, TAX, n_bootstrap=300, seed=4)
    pd.testing.assert_frame_equal(one, two)


def test_bad_inputs() -> None:
    with pytest.raises(CrosscoderUserError, match="share="):
        category_shift(A, B, TAX, share="per_token")
    with pytest.raises(CrosscoderUserError, match="no labelled latents"):
        category_shift(frame({1: None}), B, TAX)
    with pytest.raises(CrosscoderUserError, match="lacks"):
        category_shift(frame({1: [("zzz", 1.0)]}), B, TAX)


def test_write_and_read_back(tmp_path: Path) -> None:
    df = category_shift(A, B, TAX, n_bootstrap=100, names=("it", "SimPO"))
    refs = [ReferenceValue("a", 151.7, "up", "abstract"), ReferenceValue("b", None, "up", "abstract"),
            ReferenceValue("code", -28.1, "down", "secondary summaries")]
    paths = write_shift(tmp_path, df, refs)
    assert paths["png"].stat().st_size > 5000 and paths["png"].read_bytes()[:4] == b"\x89PNG"
    payload = json.loads(paths["json"].read_text())
    assert payload["definitions"]["share"] == "per_latent"
    math_row = next(r for r in payload["rows"] if r["category"] == "math")
    assert math_row["rel_change"] == "inf"
    csv = pd.read_csv(paths["csv"])
    assert list(csv["category"]) == TAX.names and (csv["share"] == "per_latent").all()
    back, back_refs = read_shift(tmp_path)
    assert back.set_index("category").loc["math", "rel_change"] == math.inf
    assert back.set_index("category").loc["a", "share_b"] == pytest.approx(0.6)
    assert back_refs[0].value == 151.7 and back.attrs["definitions"]["a"] == "it"


def test_shift_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sae_lens_crosscoder.cli import main
    from sae_lens_crosscoder.labelling.labels import write_labels
    from sae_lens_crosscoder.labelling.synthetic import SyntheticLatent, write_synthetic_analysis

    prov = {"taxonomy": "capabilities-v1"}
    it = [Label(1, "instruction_following", 1.0, "t", **prov), Label(2, "math", 1.0, "t", **prov),
          Label(3, "safety", 1.0, "t", **prov), Label(4, "other", 1.0, "t", **prov)]
    simpo = [Label(7, "instruction_following", 1.0, "t", **prov), Label(8, "instruction_following", 1.0, "t", **prov),
             Label(9, "safety", 0.5, "t", **prov)]
    write_labels(tmp_path / "it" / "labels.parquet", it, {"set": "it-only"})
    write_labels(tmp_path / "simpo.parquet", simpo, {"set": "SimPO-only"})
    analysis = write_synthetic_analysis(tmp_path / "analysis", ["pt", "simpo"], [SyntheticLatent(7, ["a *b*"])])
    out = tmp_path / "shift"
    assert main(["shift", "--a", str(tmp_path / "it"), "--b", str(tmp_path / "simpo.parquet"), "--out", str(out),
                 "--diff", "gemma2-9b-it-vs-simpo", "--n-bootstrap", "100", "--report-into", str(analysis)]) == 0
    printed = capsys.readouterr().out
    assert "SimPO-only vs it-only (share per_latent, n = 3 vs 4)" in printed
    frame, refs = read_shift(out)
    r = frame.set_index("category").loc["instruction_following"]
    assert (r.count_a, r.count_b) == (1, 2) and r.rel_change == pytest.approx((2 / 3 - 1 / 4) / (1 / 4))
    assert any(ref.category == "instruction_following" and ref.value == 151.7 for ref in refs)
    assert (analysis / "report_sections" / "50_category_shift.html").read_text().count("151.7") >= 1

    write_labels(tmp_path / "other_tax.parquet", [Label(1, "a", 1.0, "t", taxonomy="toy")])
    assert main(["shift", "--a", str(tmp_path / "it"), "--b", str(tmp_path / "other_tax.parquet")]) == 2
    assert "pass --taxonomy" in capsys.readouterr().err
    assert main(["shift", "--a", str(tmp_path / "nope"), "--b", str(tmp_path / "simpo.parquet")]) == 2
    assert "no labels table" in capsys.readouterr().err
