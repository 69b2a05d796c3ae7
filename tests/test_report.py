"""report.html: self-contained, extensible, and renders in a real headless browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis_helpers import random_crosscoder, write_sequence_cache
from sae_lens_crosscoder.analysis import AnalysisConfig, analyze, build_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(30, 10, 2, 6, generator=gen)
    acts[:15, :, 1] *= 0.2  # some windows where the chat model is quiet
    tokens = torch.randint(3, 50, (30, 10), generator=gen)
    write_sequence_cache(tmp / "cache", acts, tokens, torch.ones(30, 10, dtype=torch.bool), shard_tokens=128)
    cc = random_crosscoder(2, 6, d_sae=24, seed=7, bias=-0.2)
    with torch.no_grad():  # make a few latents exclusive so every class shows up
        cc.W_dec.data[:4, :6] *= 0.01
        cc.W_dec.data[4:8, 6:] *= 0.01
    cfg = AnalysisConfig(rule="latent_scaling", window=3, n_top_examples=3, report_max_cards=15, progress=False)
    analyze(cc, tmp / "out", cfg, activations=tmp / "cache")
    return tmp / "out"


def test_report_is_self_contained_and_complete(analysed: Path) -> None:
    page = (analysed / "report.html").read_text()
    table = pd.read_parquet(analysed / "latents.parquet")
    summary = json.loads((analysed / "summary.json").read_text())
    for anchor in ('id="summary"', 'id="plots"', 'id="latents"', 'id="class-filter"', 'id="sort-key"'):
        assert anchor in page
    # no external resources: every src is an embedded image, no stylesheet/script links
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    for src in sources:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "http://" not in page and "https://" not in page
    # cards: capped, exclusive classes first, each with its latent's numbers and examples
    cards = re.findall(r'<article class="card" data-class="([^"]+)" data-latent="(\d+)"', page)
    assert len(cards) == min(15, int((table["freq"] > 0).sum()))
    classes = [c for c, _ in cards]
    exclusive = [c.startswith("only:") for c in classes]
    assert exclusive == sorted(exclusive, reverse=True) and any(exclusive)
    assert {c for c in classes if c.startswith("only:")} == {"only:base", "only:chat"}
    latent = int(cards[0][1])
    card = page.split(f'data-latent="{latent}"', 1)[1].split("</article>", 1)[0]
    assert f"{table.loc[latent, 'delta_norm']:.3g}" in card
    record = next(r for r in map(json.loads, (analysed / "examples.jsonl").read_text().splitlines())
                  if r["latent"] == latent)
    assert card.count('<div class="ex">') == len(record["top"]) + sum(len(q["examples"]) for q in record["quantiles"])
    for cls, n in summary["class_counts"].items():
        assert f"<th>{cls}</th><td>{n}</td>" in page


def test_extension_sections_are_included_in_name_order(analysed: Path) -> None:
    sections = analysed / "report_sections"
    sections.mkdir(exist_ok=True)
    (sections / "20_shift.html").write_text('<h2>Category shift</h2><p id="shift-body">+151.7 %</p>')
    (sections / "10_labels.html").write_text('<h2>Capability labels</h2><p id="labels-body">labels</p>')
    try:
        page = build_report(analysed).read_text()
        labels, shift, cards = page.index('id="labels-body"'), page.index('id="shift-body"'), page.index('id="latents"')
        assert page.index('id="plots"') < labels < shift < cards
        assert 'href="#ext-10_labels"' in page and 'data-source="20_shift.html"' in page
    finally:
        shutil.rmtree(sections)
    assert "shift-body" not in build_report(analysed).read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(analysed: Path, tmp_path: Path) -> None:
    sections = analysed / "report_sections"
    sections.mkdir(exist_ok=True)
    (sections / "50_extra.html").write_text("<h2>Extra</h2><p>fragment</p>")
    try:
        build_report(analysed)
        shot = tmp_path / "report.png"
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "check_report_render.py"), str(analysed / "report.html"),
             "--screenshot", str(shot)],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(sections)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, result
    assert result["checks"] == dict.fromkeys(result["checks"], True)
    assert result["n_cards"] == 15 and result["count_text"] == "15 of 15 latents shown"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
