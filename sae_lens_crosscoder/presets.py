"""Run configs shipped with the package (``sae_lens_crosscoder/presets/<name>.yaml``).

A preset is an ordinary config file; ``--set`` overrides apply on top. Comments at the
top of each file state the hardware it needs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sae_lens_crosscoder.config import CrosscoderRunnerConfig, apply_overrides, load_config_dict
from sae_lens_crosscoder.errors import CrosscoderUserError


def preset_dir() -> Path:
    return Path(str(resources.files("sae_lens_crosscoder") / "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise CrosscoderUserError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def load_preset(name: str, overrides: list[str] | None = None) -> CrosscoderRunnerConfig:
    return CrosscoderRunnerConfig.from_dict(apply_overrides(load_config_dict(preset_path(name)), overrides or []))
