"""The built wheel (not the editable checkout) installs next to SAELens, registers the
crosscoders on import and ships its package data."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sae_lens, sae_lens_crosscoder
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens_crosscoder.presets import list_presets
names = ["crosscoder", "topk_crosscoder", "batchtopk_crosscoder", "jumprelu_crosscoder"]
print(json.dumps({
    "file": sae_lens_crosscoder.__file__,
    "inference": [n in SAE_CLASS_REGISTRY for n in names],
    "training": [n in SAE_TRAINING_CLASS_REGISTRY for n in names],
    "presets": list_presets(),
}))
"""


def test_wheel_installs_and_registers_architectures(tmp_path: Path):
    dist, site = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        check=True, capture_output=True,
    )
    wheel = next(dist.glob("sae_lens_crosscoder-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "sae-lens-crosscoder = sae_lens_crosscoder.cli:main" in zf.read(entry_points).decode()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )
    # run from an empty directory with the wheel's copy first on the path, so neither the
    # checkout nor the editable install can satisfy the import
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(probe["file"]).is_relative_to(site)
    assert probe["inference"] == [True] * 4 and probe["training"] == [True] * 4
    assert {"gemma2-9b-pt-vs-simpo", "gemma2-9b-pt-vs-it"} <= set(probe["presets"])
