"""The heavy steps of a diff (cache, train, analyse), the only place the diff chain calls
into the caching, training and analysis packages. The chain takes them as a ``Steps``
object, so tests (and users with their own infrastructure) can swap any of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_crosscoder.errors import CrosscoderUserError

logger = logging.getLogger(__name__)


@dataclass
class Steps:
    # cache(run_config): write the paired cache at run_config.cached_activations_path
    cache: Callable[[Any], Any]
    # train(run_config): train and save the crosscoder at run_config.output_path
    train: Callable[[Any], Any]
    # analyze(crosscoder_dir, out_dir, run_config, analysis_options): write latents.parquet,
    # examples.jsonl, summary.json and report.html to out_dir
    analyze: Callable[[Path, Path, Any, dict[str, Any]], Any]


def cache_step(cfg: Any) -> Any:
    from sae_lens_crosscoder.caching import cache_activations

    return cache_activations(cfg)


def train_step(cfg: Any) -> Any:
    from sae_lens_crosscoder.runner import train
    from sae_lens_crosscoder.trainer import latest_checkpoint

    # an interrupted run left checkpoints: continue it rather than refuse to start
    resume = latest_checkpoint(cfg.resolved_checkpoint_path()) is not None
    return train(cfg, resume=resume)


def analyze_step(crosscoder_dir: Path, out_dir: Path, cfg: Any, options: dict[str, Any]) -> Any:
    try:
        from sae_lens_crosscoder.analysis.config import AnalysisConfig
        from sae_lens_crosscoder.analysis.pipeline import analyze
    except ImportError as exc:
        raise CrosscoderUserError(
            f"this install has no analysis step ({exc}); run `sae-lens-crosscoder analyze` into {out_dir} "
            "yourself and rerun the diff: finished steps are skipped"
        ) from None
    analysis_cfg = AnalysisConfig.from_dict(dict(options))
    if cfg.cached_activations_path:
        # the cache manifest names no tokenizer the analysis can load, so examples would be
        # token ids; the models the diff names share one, and labelling needs the text
        return analyze(crosscoder_dir, out_dir, analysis_cfg, activations=cfg.cached_activations_path,
                       tokenizer=_tokenizer(cfg))
    from sae_lens_crosscoder.analysis.sources import LiveSource, open_live_store

    return analyze(crosscoder_dir, out_dir, analysis_cfg, source=LiveSource(open_live_store(cfg), cfg.model_names))


def _tokenizer(cfg: Any) -> Any:
    if not cfg.model_names:
        return None
    try:
        from sae_lens_crosscoder.loading import load_tokenizer

        return load_tokenizer(cfg.model_names[0])
    except (ImportError, CrosscoderUserError) as exc:
        logger.warning("examples will show token ids: no tokenizer for %s (%s)", cfg.model_names[0], exc)
        return None


def default_steps() -> Steps:
    return Steps(cache=cache_step, train=train_step, analyze=analyze_step)
