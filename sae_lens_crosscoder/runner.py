"""Training runs: config -> data -> SAELens's trainer -> a crosscoder saved in SAELens's format.

``sae-lens-crosscoder train CONFIG.yaml [--set key=value ...] [--resume]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import wandb
from sae_lens import TrainingSAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.constants import SAE_CFG_FILENAME
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig

from sae_lens_crosscoder.activation_cache import CachedActivationProvider, open_cache
from sae_lens_crosscoder.architectures import ARCHITECTURES
from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.config import K_ARCHITECTURES, CrosscoderRunnerConfig, add_overrides_argument
from sae_lens_crosscoder.errors import CrosscoderUserError, DataError
from sae_lens_crosscoder.trainer import RUNNER_CFG, CrosscoderTrainer, latest_checkpoint

logger = logging.getLogger(__name__)

TRAINING_SUMMARY = "training_summary.json"


# ---- data ----------------------------------------------------------------------------------
def build_data_provider(cfg: CrosscoderRunnerConfig) -> Any:
    """An iterator of flat ``[batch, n_models * d_model]`` batches with `n_models`,
    `d_model`, `state_dict()` and `load_state_dict()`."""
    if cfg.cached_activations_path:
        cache = open_cache(cfg.cached_activations_path, cfg.model_names or None)
        if not cfg.model_names:
            cfg.model_names = list(cache.manifest.get("model_names") or [f"model{m}" for m in range(cache.n_models)])
        shuffle_chunks = cfg.cache_shuffle_chunks
        if shuffle_chunks is None:
            # a cache in stream order (`cache`) is read as the live store serves it
            shuffle_chunks = cache.manifest.get("order") != "stream"
        return CachedActivationProvider(
            cache,
            batch_size=cfg.train_batch_size_tokens,
            shuffle_buffer_tokens=cfg.cache_shuffle_buffer_tokens,
            chunk_tokens=cfg.cache_chunk_tokens,
            seed=cfg.seed,
            device=cfg.device,
            shuffle_chunks=shuffle_chunks,
        )
    if not cfg.model_names:
        raise CrosscoderUserError(
            "no data source: set cached_activations_path (a paired cache) or model_names plus dataset_path (live)"
        )
    try:
        from sae_lens_crosscoder.paired_store import build_live_provider
    except ModuleNotFoundError:
        raise CrosscoderUserError(
            "live training needs the paired activation store, which this install lacks; "
            "set cached_activations_path instead"
        ) from None
    return build_live_provider(cfg)


class ModelViewProvider:
    """One ``[batch, d_model]`` view of a paired provider's batches, for a plain SAELens SAE."""

    def __init__(self, paired: Any, indices: list[int], what: str) -> None:
        self.paired = paired
        self.n_models, self.d_model = 1, paired.d_model
        for index in indices:
            if not 0 <= index < paired.n_models:
                raise CrosscoderUserError(
                    f"{what} names model {index} but the data has {paired.n_models} models; use 0..{paired.n_models - 1}"
                )

    def __iter__(self) -> ModelViewProvider:
        return self

    def __next__(self) -> torch.Tensor:
        return self.view(next(self.paired).unflatten(-1, (self.paired.n_models, self.paired.d_model)))

    def view(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return self.paired.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.paired.load_state_dict(state)


class DifferenceProvider(ModelViewProvider):
    """x[finetuned] - x[base] from a paired provider, as flat ``[batch, d_model]``."""

    def __init__(self, paired: Any, pair: list[int]) -> None:
        super().__init__(paired, pair, f"difference_pair {pair}")
        self.base, self.finetuned = pair[0], pair[1]

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.finetuned] - x[:, self.base]


class SingleModelProvider(ModelViewProvider):
    """x[model_index] alone from a paired provider: the per-model SAE baseline."""

    def __init__(self, paired: Any, index: int) -> None:
        super().__init__(paired, [index], f"model_index {index}")
        self.index = index

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


def build_checkpoint_evaluator(cfg: CrosscoderRunnerConfig, provider: Any) -> Any:
    """Evals on a fixed set of tokens at every checkpoint and at the end (off when
    eval_tokens is 0): a held-out cache if given, else the start of the training data."""
    if cfg.eval_tokens <= 0:
        return None
    from sae_lens_crosscoder.analysis import CacheSource, LiveSource, checkpoint_evaluator

    if cfg.eval_activations_path:
        source = CacheSource(cfg.eval_activations_path)
    elif cfg.cached_activations_path:
        source = CacheSource(cfg.cached_activations_path)
    else:
        source = LiveSource(provider)
    return checkpoint_evaluator(
        source,
        n_tokens=cfg.eval_tokens,
        batch_tokens=min(cfg.train_batch_size_tokens, cfg.eval_tokens),
        model_names=cfg.model_names,
        ce_eval_tokens=cfg.eval_ce_tokens,
        log_to_wandb=cfg.log_to_wandb,
    )


# ---- configs -------------------------------------------------------------------------------
def build_sae_config(cfg: CrosscoderRunnerConfig, d_model: int, n_models: int) -> TrainingSAEConfig:
    """The SAELens training config for this run (a crosscoder, or a plain SAELens SAE on the
    activation difference in `difference` mode or on one model's activations in `single` mode)."""
    d_sae = cfg.resolved_d_sae(d_model)
    values: dict[str, Any] = {"d_sae": d_sae, "device": cfg.device, "dtype": cfg.dtype}
    if cfg.mode == "crosscoder":
        cfg_cls = ARCHITECTURES[cfg.architecture][3]
        values.update(
            d_in=n_models * d_model,
            n_models=n_models,
            n_shared_latents=cfg.n_shared_latents,
            shared_sparsity_coefficient=cfg.shared_sparsity_coefficient,
        )
    else:
        if cfg.architecture not in SAE_TRAINING_CLASS_REGISTRY or cfg.architecture in ARCHITECTURES:
            options = sorted(a for a in SAE_TRAINING_CLASS_REGISTRY if a not in ARCHITECTURES)
            raise CrosscoderUserError(
                f"{cfg.mode} mode trains a SAELens SAE; architecture {cfg.architecture!r} is not one of {', '.join(options)}"
            )
        cfg_cls = SAE_TRAINING_CLASS_REGISTRY[cfg.architecture][1]
        values["d_in"] = d_model
        # the crosscoder keys set the same penalties of SAELens's own architectures
        for key in ("l1_coefficient", "l1_warm_up_steps", "l0_coefficient"):
            if getattr(cfg, key) is not None:
                values[key] = getattr(cfg, key)
        if cfg.per_model_normalization:
            # SAELens's own scaling to mean norm sqrt(d_in), estimated before training and
            # folded in at the end; the differences of two models have no natural scale
            values["normalize_activations"] = "expected_average_only_in"
        if cfg.architecture == "matryoshka_batchtopk":
            # SAELens requires the levels; nested halvings are the usual choice
            values["matryoshka_widths"] = sorted({max(1, d_sae // 8), max(1, d_sae // 4), max(1, d_sae // 2), d_sae})
    steps = cfg.total_training_steps
    if cfg.architecture in K_ARCHITECTURES:
        values["k"] = cfg.resolved_k(d_sae)
        if cfg.architecture == "topk_crosscoder" or cfg.architecture == "topk":
            values["k"] = int(values["k"])
    if cfg.architecture == "crosscoder":
        values["l1_coefficient"] = cfg.l1_coefficient if cfg.l1_coefficient is not None else DEFAULT_L1_COEFFICIENT
        values["l1_warm_up_steps"] = cfg.l1_warm_up_steps if cfg.l1_warm_up_steps is not None else steps // 20
    if cfg.architecture == "jumprelu_crosscoder":
        default_l0 = DEFAULT_L0_COEFFICIENT_PER_DIM * n_models * d_model
        values["l0_coefficient"] = cfg.l0_coefficient if cfg.l0_coefficient is not None else default_l0
        values["l0_warm_up_steps"] = steps // 2
        if cfg.sparsity_loss_mode is not None:
            values["sparsity_loss_mode"] = cfg.sparsity_loss_mode
    if cfg.architecture in ("topk_crosscoder", "batchtopk_crosscoder") and cfg.aux_loss_coefficient is not None:
        values["aux_loss_coefficient"] = cfg.aux_loss_coefficient
    if cfg.architecture == "batchtopk_crosscoder":
        # annealing k down from a larger value is on by default, as in the public
        # crosscoder recipe (diffing-toolkit: k_max 1024 for k 100); it lets more latents
        # find features early and measurably improved recovery of planted features
        k = values["k"]
        start = cfg.k_anneal_start if cfg.k_anneal_start is not None else min(10 * k, max(k, d_sae // 4))
        values["k_anneal_start"] = float(start)
        values["k_anneal_steps"] = cfg.k_anneal_steps if cfg.k_anneal_steps is not None else steps // 10
    if cfg.decoder_init_norm is not None:
        values["decoder_init_norm"] = cfg.decoder_init_norm
    valid = {f for f in cfg_cls.__dataclass_fields__}
    for key, value in cfg.sae_kwargs.items():
        if key not in valid:
            raise CrosscoderUserError(
                f"sae_kwargs key {key!r} is not a field of {cfg_cls.__name__}; valid: {', '.join(sorted(valid))}"
            )
        values[key] = value
    sae_cfg = cfg_cls(**values)
    sae_cfg.metadata.model_names = list(cfg.model_names)
    sae_cfg.metadata.model_name = " vs ".join(cfg.model_names)
    hooks = cfg.hook_names or ([cfg.hook_name] * len(cfg.model_names) if cfg.hook_name else None)
    if hooks:
        sae_cfg.metadata.hook_names = list(hooks)
        sae_cfg.metadata.hook_name = hooks[0]
    sae_cfg.metadata.context_size = cfg.context_size
    sae_cfg.metadata.prepend_bos = cfg.prepend_bos
    if cfg.mode == "difference":
        base, ft = cfg.difference_pair
        sae_cfg.metadata.difference_of = {"base": cfg.model_names[base], "finetuned": cfg.model_names[ft]}
    elif cfg.mode == "single":
        # an ordinary SAELens SAE of that model, named and hooked as one
        sae_cfg.metadata.single_model = cfg.model_names[cfg.model_index]
        sae_cfg.metadata.model_name = cfg.model_names[cfg.model_index]
        if hooks:
            sae_cfg.metadata.hook_name = hooks[cfg.model_index]
    return sae_cfg


# Chosen on planted ground truth (benchmarks/defaults.py), with activations normalised to
# mean norm sqrt(d_model) per model: L1 at 1.0 recovers every planted feature; JumpReLU's
# per-latent cost must grow with the squared norm of a token, i.e. with d_in.
DEFAULT_L1_COEFFICIENT = 1.0
DEFAULT_L0_COEFFICIENT_PER_DIM = 0.125


def build_trainer_config(cfg: CrosscoderRunnerConfig, d_sae: int) -> SAETrainerConfig:
    lr = cfg.resolved_lr(d_sae)
    return SAETrainerConfig(
        total_training_samples=cfg.training_tokens,
        train_batch_size_samples=cfg.train_batch_size_tokens,
        lr=lr,
        lr_end=cfg.lr_end if cfg.lr_end is not None else lr / 10,
        lr_scheduler_name=cfg.lr_scheduler_name,
        lr_warm_up_steps=cfg.resolved_warm_up_steps(),
        lr_decay_steps=cfg.resolved_decay_steps(),
        n_restart_cycles=cfg.n_restart_cycles,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        device=cfg.device,
        autocast=cfg.autocast,
        dead_feature_window=cfg.resolved_dead_feature_window(),
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(cfg.resolved_checkpoint_path()),
        save_final_checkpoint=False,
        logger=LoggingConfig(
            log_to_wandb=cfg.log_to_wandb,
            wandb_project=cfg.wandb_project,
            wandb_entity=cfg.wandb_entity,
            run_name=cfg.run_name,
            wandb_log_frequency=cfg.wandb_log_frequency,
            eval_every_n_wandb_logs=cfg.eval_every_n_wandb_logs,
        ),
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
    )


# ---- the run -------------------------------------------------------------------------------
@dataclass
class TrainingResult:
    output_path: Path
    sae: TrainingSAE[Any]
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def estimate_scaling(provider: Any, n_batches: int, n_models: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model factors sqrt(d_model) / E||x_m|| and the mean of the scaled activations."""
    norm_sum = torch.zeros(n_models, dtype=torch.float64)
    act_sum: torch.Tensor | None = None
    count = 0
    for _ in range(max(1, n_batches)):
        x = next(provider).double().unflatten(-1, (n_models, -1)).cpu()
        if not torch.isfinite(x).all():
            raise DataError("NaN or inf in the activations used to estimate the scaling; check the models and data")
        norm_sum += x.norm(dim=-1).sum(0)
        act_sum = x.sum(0) if act_sum is None else act_sum + x.sum(0)
        count += x.shape[0]
    d_model = act_sum.shape[-1]  # type: ignore[union-attr]
    mean_norm = norm_sum / count
    if (mean_norm == 0).any():
        raise DataError(f"model(s) {(mean_norm == 0).nonzero().flatten().tolist()} produced all-zero activations")
    factors = (d_model**0.5) / mean_norm
    mean = act_sum / count * factors[:, None]  # type: ignore[operator]
    return factors.float(), mean.float().flatten()


def train(cfg: CrosscoderRunnerConfig, resume: bool = False, data_provider: Any = None) -> TrainingResult:
    """Train a crosscoder (or difference SAE) as the config says and save it to
    ``cfg.output_path`` in SAELens's format. With ``resume``, continue from the latest
    checkpoint under the checkpoint path."""
    seed_everything(cfg.seed)
    provider = data_provider if data_provider is not None else build_data_provider(cfg)
    if cfg.model_names and len(cfg.model_names) != provider.n_models:
        raise CrosscoderUserError(
            f"model_names lists {len(cfg.model_names)} models but the data has {provider.n_models}; "
            "give one name per model, in the data's order"
        )
    if not cfg.model_names:
        cfg.model_names = [f"model{m}" for m in range(provider.n_models)]
    train_provider = provider
    if cfg.mode == "difference":
        train_provider = DifferenceProvider(provider, cfg.difference_pair)
    elif cfg.mode == "single":
        train_provider = SingleModelProvider(provider, cfg.model_index)
    sae_cfg = build_sae_config(cfg, provider.d_model, provider.n_models)
    sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    trainer_cfg = build_trainer_config(cfg, sae_cfg.d_sae)
    checkpoint_base = cfg.resolved_checkpoint_path()

    checkpoint = latest_checkpoint(checkpoint_base) if resume else None
    if resume and checkpoint is None:
        raise CrosscoderUserError(
            f"--resume: no checkpoint under {checkpoint_base}; start without --resume "
            "(checkpoints need checkpoint_every_tokens or n_checkpoints)"
        )
    if checkpoint is not None:
        check_checkpoint_compatible(checkpoint, sae_cfg)
    elif not resume and checkpoint_base.exists() and latest_checkpoint(checkpoint_base) is not None:
        raise CrosscoderUserError(
            f"{checkpoint_base} already holds checkpoints of an earlier run; pass --resume to continue it, "
            "or choose another output_path"
        )

    wandb_id = None
    if checkpoint is not None:
        wandb_id = json.loads((checkpoint / "data_state.json").read_text()).get("wandb_id")
    owns_wandb_run = False
    if cfg.log_to_wandb:
        if wandb.run is not None:
            # started by the caller (a sweep agent, sweep.py): log into it, leave it open
            run = wandb.run
            run.config.update(cfg.to_dict(), allow_val_change=True)
        else:
            run = wandb.init(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                name=cfg.run_name,
                tags=cfg.wandb_tags or None,
                config=cfg.to_dict(),
                id=wandb_id,
                resume="allow" if wandb_id else None,
            )
            owns_wandb_run = True
        wandb_id = run.id

    trainer = CrosscoderTrainer(
        trainer_cfg,
        sae,
        train_provider,
        runner_cfg=cfg.to_dict(),
        checkpoint_every_tokens=cfg.checkpoint_every_tokens,
        keep_checkpoints=cfg.keep_checkpoints,
        extra_checkpoint_state=lambda: {"wandb_id": wandb_id},
        checkpoint_evaluator=build_checkpoint_evaluator(cfg, provider) if cfg.mode == "crosscoder" else None,
    )
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        logger.info("resumed from %s at %d tokens", checkpoint, trainer.n_training_samples)
    elif isinstance(sae, CrosscoderMixin):
        if cfg.per_model_normalization or cfg.b_dec_init == "mean":
            factors, mean = estimate_scaling(provider, cfg.n_batches_for_norm_estimate, provider.n_models)
            if cfg.per_model_normalization:
                sae.set_activation_scaling_factors(factors)
            else:
                mean = mean / factors.repeat_interleave(provider.d_model)
            if cfg.b_dec_init == "mean":
                sae.b_dec.data.copy_(mean.to(sae.b_dec.dtype))
            logger.info("per-model scaling factors: %s", [round(f, 5) for f in factors.tolist()])

    start = time.perf_counter()
    start_tokens = trainer.n_training_samples
    try:
        trainer.fit()
    except (DataError, KeyboardInterrupt):
        if trainer.n_training_samples > start_tokens:
            trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
            logger.error("progress saved to %s; fix the problem and rerun with --resume", checkpoint_base)
        raise
    elapsed = time.perf_counter() - start

    summary = {
        "architecture": cfg.architecture,
        "mode": cfg.mode,
        "model_names": cfg.model_names,
        "d_sae": sae_cfg.d_sae,
        "n_training_tokens": trainer.n_training_samples,
        "n_training_steps": trainer.n_training_steps,
        "tokens_per_second": (trainer.n_training_samples - start_tokens) / max(elapsed, 1e-9),
        "lr": trainer_cfg.lr,
        **trainer.window_metrics(),
    }
    if isinstance(sae, CrosscoderMixin):
        summary["activation_scaling_factors"] = sae.activation_scaling_factors.tolist()
    summary["evals"] = trainer.run_checkpoint_evals()
    save_final(sae, cfg, summary)
    if owns_wandb_run and wandb.run is not None:
        wandb.finish()
    return TrainingResult(Path(cfg.output_path), sae, summary)


def save_final(sae: TrainingSAE[Any], cfg: CrosscoderRunnerConfig, summary: dict[str, Any]) -> None:
    """Inference weights + cfg.json (SAELens's format), the run config and a summary,
    written beside the final directory and renamed into place."""
    out = Path(cfg.output_path)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    sae.save_inference_model(tmp)
    (tmp / RUNNER_CFG).write_text(json.dumps(cfg.to_dict(), indent=2))
    (tmp / TRAINING_SUMMARY).write_text(json.dumps(summary, indent=2))
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()


def check_checkpoint_compatible(checkpoint: Path, sae_cfg: TrainingSAEConfig) -> None:
    saved = json.loads((checkpoint / SAE_CFG_FILENAME).read_text())
    if saved.get("architecture") != sae_cfg.architecture():
        raise CrosscoderUserError(
            f"checkpoint {checkpoint} is a {saved.get('architecture')!r} but the config trains "
            f"{sae_cfg.architecture()!r}; resume with the config the run started with"
        )
    for key in ("d_in", "d_sae", "n_models", "n_shared_latents"):
        if key in saved and saved[key] != getattr(sae_cfg, key, saved[key]):
            raise CrosscoderUserError(
                f"checkpoint {checkpoint} has {key}={saved[key]} but the config gives "
                f"{getattr(sae_cfg, key)}; resume with the config the run started with"
            )


# ---- CLI -----------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config")
    add_overrides_argument(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")


def run(args: argparse.Namespace) -> int:
    cfg = CrosscoderRunnerConfig.from_file(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    metrics = {k: round(v, 4) for k, v in result.summary.items() if k.startswith(("fve_", "l0", "dead"))}
    print(f"saved {cfg.architecture} to {result.output_path} | {json.dumps(metrics)}")
    return 0
