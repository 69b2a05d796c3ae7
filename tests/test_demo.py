"""The main job at reduced scale: tiny organism, small dictionaries, the whole chain."""

from __future__ import annotations

import json
from pathlib import Path

from sae_lens_crosscoder.demo import VIEWS, run_demo
from sae_lens_crosscoder.organism import BEHAVIOURS


def test_reduced_end_to_end_run_recovers_a_planted_behaviour(tmp_path: Path):
    summary = run_demo(tmp_path / "out", tmp_path / "organism", scale="quick", progress=False)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["recovered"] == summary["recovered"]
    assert set(summary["recovered"]) == set(VIEWS)
    recovered = set().union(*map(set, summary["recovered"].values()))
    assert recovered, summary["behaviours"]
    for behaviour in BEHAVIOURS:
        scores = summary["behaviours"][behaviour.name]
        assert scores["positions"] > 0
        for view in VIEWS:
            match = scores[view]
            assert 0.0 <= match["precision"] <= 1.0 and 0.0 <= match["recall"] <= 1.0
            assert match["recovered"] == (match["precision"] >= 0.5 and match["recall"] >= 0.2)
    for view in ("crosscoder_sets", "difference_sets"):
        assert set(summary["category_shift"][view]) <= {b.category for b in BEHAVIOURS}
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Planted behaviours: what each view recovered" in report and "Category shift" in report
    assert all(step["status"] == "ran" for step in summary["steps"])
    # a second run reuses every artifact
    again = run_demo(tmp_path / "out", tmp_path / "organism", scale="quick", progress=False)
    assert all(step["status"] == "skipped" for step in again["steps"])
    assert again["behaviours"] == summary["behaviours"]
