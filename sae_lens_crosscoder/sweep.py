"""The program a W&B sweep agent runs: one training run whose config is a base config with
the sweep's parameters on top.

``python -m sae_lens_crosscoder.sweep (CONFIG | --preset NAME) [--set key=value ...] [--runs-dir DIR]``

The agent starts this program with ``WANDB_SWEEP_PARAM_PATH`` pointing at the parameters it
drew; ``wandb.init`` reads them into ``wandb.config``. Every key of ``wandb.config`` must be
a key of `CrosscoderRunnerConfig` (``lr``, ``k``, ``d_sae``, ``expansion_factor``, ...): the
sweep's values replace the base config's, the result is validated like any config (a typo
in the sweep YAML fails the run with the valid keys named), and the run trains into
``<runs-dir>/<run id>`` while logging to the sweep's run. Its final metrics go to the run
summary as ``final/...`` (``final/fve_mean`` is the mean fraction of variance explained
over the models), for the sweep's ``metric``. See tutorials/sweeps.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import wandb

from sae_lens_crosscoder.config import CrosscoderRunnerConfig, add_overrides_argument, apply_overrides, load_config_dict
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.presets import preset_path

logger = logging.getLogger(__name__)


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    if (args.config is None) == (args.preset is None):
        raise CrosscoderUserError("give a base config file or --preset NAME (one of them)")
    path = preset_path(args.preset) if args.preset else Path(args.config)
    data = apply_overrides(load_config_dict(path), args.overrides)
    CrosscoderRunnerConfig.from_dict(data)  # fail before the run starts if the base is invalid
    return data


def sweep_config(base: dict[str, Any], drawn: dict[str, Any], runs_dir: Path, run_id: str, run_name: str) -> CrosscoderRunnerConfig:
    """The run's config: the base, the sweep's values on top, and per-run output paths."""
    values = {**base, **drawn}
    values["log_to_wandb"] = True
    values["output_path"] = str(runs_dir / run_id)
    values.pop("checkpoint_path", None)  # one checkpoint folder per run, under output_path
    values.setdefault("run_name", run_name)
    return CrosscoderRunnerConfig.from_dict(values)


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    out = {f"final/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    fves = [v for k, v in summary.items() if k.startswith("fve_model")]
    if fves:
        out["final/fve_mean"] = float(sum(fves) / len(fves))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from sae_lens_crosscoder.runner import train

    parser = argparse.ArgumentParser(prog="python -m sae_lens_crosscoder.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="base run config (YAML/JSON)")
    parser.add_argument("--preset", help="a shipped preset as the base config instead of a file")
    add_overrides_argument(parser, help="override a base config key (repeatable); the sweep's values still win")
    parser.add_argument("--runs-dir", default="sweep_runs", help="parent folder of the runs' outputs")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        base = base_config(args)
        run = wandb.init(
            project=base.get("wandb_project", CrosscoderRunnerConfig.wandb_project),
            entity=base.get("wandb_entity"),
            tags=base.get("wandb_tags") or None,
        )
        try:
            drawn = dict(run.config)
            logger.info("sweep parameters: %s", drawn)
            cfg = sweep_config(base, drawn, Path(args.runs_dir), run.id, run.name or run.id)
            run.config.update(cfg.to_dict(), allow_val_change=True)
            result = train(cfg)
            run.summary.update(final_metrics(result.summary))
        except BaseException:
            wandb.finish(exit_code=1)
            raise
        wandb.finish()
    except CrosscoderUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
