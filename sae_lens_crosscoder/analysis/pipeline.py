"""The analysis pass: one streaming, unshuffled pass over an activation source that computes
firing statistics, Latent Scaling for every latent, per-model evals, CE/KL splices (live
models) and max-activating / quantile examples; then the table, summary, plots and report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import sae_lens_crosscoder  # noqa: F401  (registers the crosscoder architectures)
from sae_lens_crosscoder.activation_cache import write_json_atomic
from sae_lens_crosscoder.analysis.config import AnalysisConfig
from sae_lens_crosscoder.analysis.evals import ReconstructionStats, SpliceStats, splice_evals
from sae_lens_crosscoder.analysis.examples import EXAMPLES_FILE, ExampleCollector, token_decoder, write_examples
from sae_lens_crosscoder.analysis.latent_scaling import LatentScalingAccumulator
from sae_lens_crosscoder.analysis.latent_table import OTHER, SHARED, build_latent_table, classify, only
from sae_lens_crosscoder.analysis.sources import ActivationSource, CacheSource
from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.errors import CrosscoderUserError, DataError

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
TABLE_PARQUET = "latents.parquet"
TABLE_CSV = "latents.csv"


@dataclass
class AnalysisResult:
    out_dir: Path
    table: pd.DataFrame
    summary: dict[str, Any]


def load_crosscoder(path: str | Path, device: str = "cpu") -> Any:
    """A crosscoder saved in SAELens's format; clear errors for anything else."""
    from sae_lens_crosscoder.loading import load_saved_sae

    sae, cfg = load_saved_sae(path, device, what="crosscoder")
    arch = cfg.get("architecture")
    if not isinstance(sae, CrosscoderMixin):
        raise CrosscoderUserError(
            f"{path} holds a {arch!r} SAE, not a crosscoder; analyze needs a crosscoder "
            "(architecture crosscoder, topk_crosscoder, batchtopk_crosscoder or jumprelu_crosscoder)"
        )
    return sae


def resolve_model_names(crosscoder: Any, source: ActivationSource) -> list[str]:
    names = crosscoder.cfg.metadata.get("model_names") if crosscoder.cfg.metadata is not None else None
    source_names = source.model_names
    if names and source_names and list(names) != list(source_names):
        logger.warning("model names differ: crosscoder %s, activations %s; using the crosscoder's", names, source_names)
    names = list(names or source_names or [f"model{m}" for m in range(crosscoder.n_models)])
    if len(names) != crosscoder.n_models:
        names = [f"model{m}" for m in range(crosscoder.n_models)]
    return [str(n) for n in names]


def resolve_pair(pair: list[int | str], names: list[str]) -> tuple[int, int]:
    out = []
    for item in pair:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise CrosscoderUserError(
                    f"--pair index {item} is out of range: the crosscoder has {len(names)} models ({', '.join(names)})"
                )
            out.append(item)
        elif item in names:
            out.append(names.index(item))
        else:
            raise CrosscoderUserError(f"unknown model {item!r} in --pair; choose from {', '.join(names)} or indices")
    if out[0] == out[1]:
        raise CrosscoderUserError(f"--pair names the same model twice ({names[out[0]]}); compare two different models")
    return out[0], out[1]


def check_compatible(crosscoder: Any, n_models: int, d_model: int, what: str) -> None:
    if (n_models, d_model) != (crosscoder.n_models, crosscoder.d_model):
        raise CrosscoderUserError(
            f"the crosscoder expects {crosscoder.n_models} models of d_model {crosscoder.d_model} but {what} has "
            f"{n_models} models of d_model {d_model}; analyse with the activations the crosscoder was trained on"
        )


class FiringStats:
    """Per-latent firing count, largest and summed activation over counted tokens."""

    def __init__(self, d_sae: int, device: torch.device, dtype: torch.dtype) -> None:
        self.count = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.max_act = torch.zeros(d_sae, dtype=dtype, device=device)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64, device=device)

    def update(self, cols: torch.Tensor, vals: torch.Tensor) -> None:
        self.count += torch.bincount(cols, minlength=self.count.numel())
        self.max_act.scatter_reduce_(0, cols, vals, "amax")
        self.sum_act.index_add_(0, cols, vals.double())


def check_finite(x: torch.Tensor, n_tokens: int) -> None:
    if not bool(torch.isfinite(x.sum())):  # one reduction: NaN and inf propagate into the sum
        raise DataError(
            f"NaN or inf in the activations within {x.shape[0]} rows after token {n_tokens} of the "
            "stream; regenerate that part of the cache (or check the models' dtype)"
        )


def counted_nonzeros(
    f: torch.Tensor, core: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(rows, cols, vals) of the non-zero latent activations on counted rows, row-major, and
    whether every row is counted."""
    all_core = bool(core.all())
    rows, cols = f.nonzero(as_tuple=True)  # row-major
    if not all_core:
        keep = core[rows]
        rows, cols = rows[keep], cols[keep]
    return rows, cols, f[rows, cols], all_core


class AnalysisPass:
    """State of the streaming pass."""

    def __init__(self, crosscoder: Any, cfg: AnalysisConfig, pair: tuple[int, int]) -> None:
        self.crosscoder, self.cfg, self.pair = crosscoder, cfg, pair
        W = crosscoder.W_dec.detach()
        self.device, self.dtype = W.device, W.dtype
        self.n_models, self.d_model, self.d_sae = crosscoder.n_models, crosscoder.d_model, crosscoder.cfg.d_sae
        self.decoder = W.unflatten(-1, (self.n_models, self.d_model))
        self.scale = crosscoder._flat_scale(torch.zeros((), dtype=self.dtype, device=self.device))
        self.scaling = LatentScalingAccumulator(self.decoder, pair, cfg.latent_chunk_size)
        self.firing = FiringStats(self.d_sae, self.device, self.dtype)
        self.stats = ReconstructionStats(self.n_models, crosscoder.activation_scaling_factors)
        self.splice = SpliceStats(self.n_models)
        self.examples = ExampleCollector(
            self.d_sae,
            cfg.n_top_examples,
            cfg.window,
            cfg.n_quantiles,
            cfg.examples_per_quantile,
            latents=cfg.example_latents,
            seed=cfg.seed,
        )
        self.n_tokens = 0

    @torch.no_grad()
    def update(self, batch: Any, models: list[Any] | None = None, hook_names: list[str] | None = None) -> None:
        cc = self.crosscoder
        x = batch.acts.to(self.device, self.dtype)
        f = cc.encode(x)  # [R, d_sae]
        recon = cc.decode_normalized(f).unflatten(-1, (self.n_models, self.d_model))
        with serial_threads(self.device):
            self._bookkeeping(batch, x, f, recon)
        if models and hook_names and batch.token_batch is not None and self.splice.n_positions < self.cfg.ce_eval_tokens:
            acts = batch.acts.view(*batch.token_batch.shape, self.n_models, self.d_model)
            self.splice.update(splice_evals(cc, models, hook_names, batch.token_batch, batch.token_mask, acts))

    def _bookkeeping(self, batch: Any, x: torch.Tensor, f: torch.Tensor, recon: torch.Tensor) -> None:
        check_finite(x, self.n_tokens)
        x_norm = (x.flatten(1) * self.scale).unflatten(-1, (self.n_models, self.d_model))
        core = batch.core.to(self.device)
        rows, cols, vals, all_core = counted_nonzeros(f, core)
        self.firing.update(cols, vals)
        self.scaling.update(f, x_norm, recon, row_mask=None if all_core else core, nonzeros=(rows, cols, vals))
        if all_core:
            self.stats.update(x_norm, recon, rows.numel())
        else:
            self.stats.update(x_norm[core], recon[core], rows.numel())
        self.examples.update(batch, f, rows.cpu(), cols.cpu(), vals.cpu())
        self.n_tokens += int(core.sum())


@contextmanager
def serial_threads(device: torch.device) -> Iterator[None]:
    """Run the per-batch bookkeeping (sorts, scatters and indexing on non-zero lists) on one
    CPU thread: torch's parallel versions of these small ops synchronise threads, which on
    a busy machine costs many times the work itself."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def analyze(
    crosscoder: str | Path | Any,
    out_dir: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    activations: str | Path | None = None,
    source: ActivationSource | None = None,
    tokenizer: Any = None,
    make_report: bool = True,
) -> AnalysisResult:
    """Analyse a crosscoder (a directory or a loaded crosscoder) on a paired cache
    (`activations`) or any `ActivationSource` (e.g. `LiveSource(store)`); write the outputs
    described in the package docstring to `out_dir`. A difference SAE's directory is
    analysed by `difference.analyze_difference` (without a join)."""
    cfg = cfg or AnalysisConfig()
    crosscoder_path = str(crosscoder) if isinstance(crosscoder, (str, Path)) else None
    if crosscoder_path is not None:
        from sae_lens_crosscoder.difference.sae import is_difference_sae

        if is_difference_sae(crosscoder_path):  # the same outputs, for an SAE on the activation difference
            from sae_lens_crosscoder.difference.analysis import analyze_difference

            return analyze_difference(crosscoder_path, out_dir, cfg, activations=activations, source=source,
                                      tokenizer=tokenizer, make_report=make_report)
        crosscoder = load_crosscoder(crosscoder_path, cfg.device)
    elif not isinstance(crosscoder, CrosscoderMixin):
        raise CrosscoderUserError("analyze needs a crosscoder (an SAE with a model axis), not a plain SAE")
    if (activations is None) == (source is None):
        raise CrosscoderUserError("give the activations: a paired cache (--activations) or a run config (--config)")
    if source is None:
        source = CacheSource(activations, tokenizer=tokenizer)  # type: ignore[arg-type]
    elif tokenizer is not None:
        source.tokenizer = tokenizer
    if isinstance(source, CacheSource):
        check_compatible(crosscoder, source.n_models, source.d_model, f"the cache {source.path}")
    bad = [j for j in cfg.example_latents or [] if not 0 <= j < crosscoder.cfg.d_sae]
    if bad:
        raise CrosscoderUserError(
            f"example latents {bad[:5]} are out of range: the crosscoder has latents 0..{crosscoder.cfg.d_sae - 1}"
        )
    names = resolve_model_names(crosscoder, source)
    pair = resolve_pair(list(cfg.pair), names)
    first, second = names[pair[0]], names[pair[1]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    state = AnalysisPass(crosscoder, cfg, pair)
    models = getattr(source, "models", None)
    hook_names = getattr(source, "hook_names", None)
    budget = source.budget(cfg.n_tokens)
    start = time.perf_counter()
    checked = False
    with tqdm(total=budget, unit="tok", desc="analysis", disable=not cfg.progress) as bar:
        for batch in source.batches(cfg.n_tokens, cfg.batch_tokens, cfg.window):
            if not checked:
                check_compatible(crosscoder, batch.acts.shape[1], batch.acts.shape[2], "the activation source")
                checked = True
            state.update(batch, models, hook_names)
            bar.update(batch.n_core)
    pass_seconds = time.perf_counter() - start
    if state.n_tokens == 0:
        raise CrosscoderUserError("the activation source yielded no tokens; check the cache or the dataset")

    table = build_latent_table(
        state.decoder,
        names,
        pair,
        state.firing.count,
        state.n_tokens,
        state.firing.max_act,
        state.firing.sum_act,
        state.scaling.result(),
        n_designated_shared=crosscoder.cfg.n_shared_latents,
    )
    table["class"] = classify(table, first, second, cfg.rule, cfg.thresholds)
    table.to_parquet(out / TABLE_PARQUET, index=False)
    table.to_csv(out / TABLE_CSV, index=False)

    n_records = write_examples(
        out / EXAMPLES_FILE,
        state.examples.records(token_decoder(source.tokenizer), source.context_tokens),
    )
    dead_fraction = float((state.firing.count == 0).double().mean())
    evals = state.stats.summary(names, dead_fraction)
    if state.splice.n_positions:
        for name, values in state.splice.summary(names).items():
            evals["per_model"][name].update(values)
    counts = table["class"].value_counts()
    class_names = [SHARED, only(first), only(second), OTHER]
    summary: dict[str, Any] = {
        "crosscoder": crosscoder_path,
        "architecture": crosscoder.cfg.architecture(),
        "d_sae": crosscoder.cfg.d_sae,
        "n_models": crosscoder.n_models,
        "d_model": crosscoder.d_model,
        "model_names": names,
        "activation_scaling_factors": crosscoder.activation_scaling_factors.tolist(),
        "pair": {"first": first, "second": second, "indices": list(pair)},
        "source": source.description,
        "token_budget": cfg.n_tokens,
        "n_tokens": state.n_tokens,
        "rule": cfg.rule,
        "thresholds": cfg.to_dict()["thresholds"],
        "class_counts": {c: int(counts.get(c, 0)) for c in class_names},
        "evals": evals,
        "latent_scaling": {
            "chunk_size": state.scaling.chunk_size,
            "n_latents_with_nu": int(table["nu_error"].notna().sum()),
        },
        "examples": {"n_latents": n_records, "n_top": cfg.n_top_examples, "window": cfg.window},
        "timing": {"pass_seconds": pass_seconds, "tokens_per_s": state.n_tokens / max(pass_seconds, 1e-9)},
        "config": cfg.to_dict(),
        "files": {"table": [TABLE_PARQUET, TABLE_CSV], "examples": EXAMPLES_FILE},
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    if make_report:
        from sae_lens_crosscoder.analysis.plots import write_plots
        from sae_lens_crosscoder.analysis.report import build_report

        summary["files"]["plots"] = write_plots(table, summary, out)
        write_json_atomic(out / SUMMARY_FILE, summary)
        summary["files"]["report"] = build_report(out).name
        write_json_atomic(out / SUMMARY_FILE, summary)
    logger.info(
        "analysed %d tokens in %.1fs: %s", state.n_tokens, pass_seconds, json.dumps(summary["class_counts"])
    )
    return AnalysisResult(out, table, summary)
