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
    # examples.jsonl, summary.json and report.html to out_dir. For a difference SAE
    # (run_config.mode "difference") the options may also hold join_crosscoder,
    # crosscoder_analysis (directories) and join (JoinThresholds fields).
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
    options = dict(options)
    join = {key: options.pop(key) for key in ("join_crosscoder", "crosscoder_analysis", "join") if key in options}
    analysis_cfg = AnalysisConfig.from_dict(options)
    if cfg.cached_activations_path:
        # the cache manifest names no tokenizer the analysis can load, so examples would be
        # token ids; the models the diff names share one, and labelling needs the text
        data: dict[str, Any] = {"activations": cfg.cached_activations_path, "tokenizer": _tokenizer(cfg)}
    else:
        from sae_lens_crosscoder.analysis.sources import LiveSource, open_live_store

        data = {"source": LiveSource(open_live_store(cfg), cfg.model_names)}
    if cfg.mode == "difference":
        from sae_lens_crosscoder.difference.analysis import analyze_difference
        from sae_lens_crosscoder.difference.join import JoinThresholds

        return analyze_difference(crosscoder_dir, out_dir, analysis_cfg, join_crosscoder=join.get("join_crosscoder"),
                                  crosscoder_analysis=join.get("crosscoder_analysis"),
                                  join_thresholds=JoinThresholds.from_dict(join.get("join") or {}), **data)
    return analyze(crosscoder_dir, out_dir, analysis_cfg, **data)


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
