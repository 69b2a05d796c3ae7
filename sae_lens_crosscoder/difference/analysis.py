"""The analysis pass of a difference SAE: one streaming pass over the paired activations
(a cache or live models, the crosscoder analysis's sources) that encodes x[finetuned] -
x[base] on every token, collects firing statistics, reconstruction evals and max-activating
/ quantile examples with the crosscoder analysis's collectors, and, joined to a crosscoder,
encodes the same tokens with it for the join statistics (join.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sae_lens_crosscoder.activation_cache import write_json_atomic
from sae_lens_crosscoder.analysis.config import AnalysisConfig
from sae_lens_crosscoder.analysis.evals import ReconstructionStats
from sae_lens_crosscoder.analysis.examples import EXAMPLES_FILE, ExampleCollector, token_decoder, write_examples
from sae_lens_crosscoder.analysis.latent_table import firing_columns
from sae_lens_crosscoder.analysis.pipeline import (
    SUMMARY_FILE,
    TABLE_CSV,
    TABLE_PARQUET,
    AnalysisResult,
    FiringStats,
    check_finite,
    counted_nonzeros,
    load_crosscoder,
    resolve_pair,
    serial_threads,
)
from sae_lens_crosscoder.analysis.sources import ActivationSource, CacheSource
from sae_lens_crosscoder.architectures.base import CrosscoderMixin
from sae_lens_crosscoder.difference.join import CoFiring, JoinResult, JoinThresholds, compute_join, raw_decoder_difference
from sae_lens_crosscoder.difference.sae import DifferencePair, check_plain_sae, is_difference_sae, load_difference_sae
from sae_lens_crosscoder.errors import CrosscoderUserError

logger = logging.getLogger(__name__)

LIVE, DEAD = "difference", "dead"
JOIN_PARQUET, JOIN_CSV = "join.parquet", "join.csv"
DIFFERENCE_SAE, CROSSCODER = "difference SAE", "crosscoder"


class DifferencePass:
    """State of the streaming pass; `crosscoder` (optional) is encoded on the same rows."""

    def __init__(self, sae: Any, cfg: AnalysisConfig, pair: tuple[int, int], crosscoder: Any = None) -> None:
        self.sae, self.cfg, self.pair, self.crosscoder = sae, cfg, pair, crosscoder
        W = sae.W_dec.detach()
        self.device, self.dtype = W.device, W.dtype
        self.d_sae = sae.cfg.d_sae
        self.firing = FiringStats(self.d_sae, self.device, self.dtype)
        self.stats = ReconstructionStats(1, torch.ones(1))
        self.examples = ExampleCollector(
            self.d_sae, cfg.n_top_examples, cfg.window, cfg.n_quantiles, cfg.examples_per_quantile,
            latents=cfg.example_latents, seed=cfg.seed,
        )
        self.cofiring: CoFiring | None = None
        if crosscoder is not None:
            self.cc_stats = ReconstructionStats(1, torch.ones(1))
            self.cofiring = CoFiring(torch.nn.functional.normalize(W.float(), dim=-1), crosscoder.cfg.d_sae)
        self.n_tokens = 0

    @torch.no_grad()
    def update(self, batch: Any) -> None:
        base, ft = self.pair
        x = batch.acts.to(self.device, self.dtype)
        delta = x[:, ft] - x[:, base]
        f = self.sae.encode(delta)
        recon = self.sae.decode(f)
        if self.crosscoder is not None:
            cc = self.crosscoder
            g = cc.encode(x)
            cc_recon = cc.unflatten_models(cc.decode(g))
            delta_cc = cc_recon[:, ft] - cc_recon[:, base]
        with serial_threads(self.device):
            check_finite(x, self.n_tokens)
            core = batch.core.to(self.device)
            rows, cols, vals, all_core = counted_nonzeros(f, core)
            self.firing.update(cols, vals)
            counted = delta if all_core else delta[core]
            self.stats.update(counted[:, None], (recon if all_core else recon[core])[:, None], rows.numel())
            self.examples.update(batch, f, rows.cpu(), cols.cpu(), vals.cpu())
            if self.cofiring is not None:
                c_rows, c_cols, c_vals, _ = counted_nonzeros(g, core)
                self.cc_stats.update(counted[:, None], (delta_cc if all_core else delta_cc[core])[:, None],
                                     c_rows.numel())
                self.cofiring.update(x.shape[0], (rows, cols), (c_rows, c_cols, c_vals), delta, delta_cc)
            self.n_tokens += int(core.sum())


def analyze_difference(
    sae: str | Path | Any,
    out_dir: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    activations: str | Path | None = None,
    source: ActivationSource | None = None,
    tokenizer: Any = None,
    join_crosscoder: str | Path | Any = None,
    join_thresholds: JoinThresholds | None = None,
    crosscoder_analysis: str | Path | None = None,
    make_report: bool = True,
) -> AnalysisResult:
    """Analyse a difference SAE (a directory or a loaded SAE) on a paired cache
    (`activations`) or any `ActivationSource`, optionally joined to a crosscoder of the same
    pair (`join_crosscoder`, a directory or a loaded crosscoder). `crosscoder_analysis`, the
    crosscoder's analysis directory, adds its latent classes and examples to the join and
    receives the side-by-side section in its own report. Writes the files described in the
    package docstring to `out_dir`."""
    cfg = cfg or AnalysisConfig()
    thresholds = join_thresholds or JoinThresholds()
    sae_path = str(sae) if isinstance(sae, (str, Path)) else None
    if sae_path is not None:
        sae, pair_info = load_difference_sae(sae_path, cfg.device)
    else:
        check_plain_sae(sae, "the SAE given")
        pair_info = DifferencePair.from_metadata(sae.cfg.metadata, "the SAE given")
    if (activations is None) == (source is None):
        raise CrosscoderUserError("give the activations: a paired cache (--activations) or a run config (--config)")
    if source is None:
        source = CacheSource(activations, tokenizer=tokenizer)  # type: ignore[arg-type]
    elif tokenizer is not None:
        source.tokenizer = tokenizer
    d_model = sae.cfg.d_in
    if source.n_models < 2 or source.d_model not in (d_model, -1):
        raise CrosscoderUserError(
            f"the difference SAE expects paired activations of d_model {d_model} but the activations hold "
            f"{source.n_models} model(s) of d_model {source.d_model}; analyse it with the data it was trained on"
        )
    names = model_names(pair_info, source)
    pair = pair_info.indices(names)
    check_pair_option(cfg, names, pair, pair_info)
    bad = [j for j in cfg.example_latents or [] if not 0 <= j < sae.cfg.d_sae]
    if bad:
        raise CrosscoderUserError(
            f"example latents {bad[:5]} are out of range: the difference SAE has latents 0..{sae.cfg.d_sae - 1}"
        )
    crosscoder, crosscoder_path = None, None
    if join_crosscoder is not None:
        crosscoder_path = str(join_crosscoder) if isinstance(join_crosscoder, (str, Path)) else None
        if crosscoder_path and is_difference_sae(crosscoder_path):
            raise CrosscoderUserError(
                f"{crosscoder_path} is a difference SAE, not a crosscoder; --join-crosscoder takes a crosscoder "
                "trained on the same pair"
            )
        crosscoder = load_crosscoder(crosscoder_path, cfg.device) if crosscoder_path else join_crosscoder
        check_joinable(crosscoder, pair_info, names, d_model)
    cc_classes = crosscoder_classes(crosscoder_analysis) if crosscoder is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    state = DifferencePass(sae, cfg, pair, crosscoder)
    budget = source.budget(cfg.n_tokens)
    start = time.perf_counter()
    with tqdm(total=budget, unit="tok", desc="difference analysis", disable=not cfg.progress) as bar:
        for batch in source.batches(cfg.n_tokens, cfg.batch_tokens, cfg.window):
            if tuple(batch.acts.shape[1:]) != (len(names), d_model):
                raise CrosscoderUserError(
                    f"the activation source yields {list(batch.acts.shape[1:])} per token but the difference SAE "
                    f"expects [{len(names)}, {d_model}]; analyse it with the data it was trained on"
                )
            state.update(batch)
            bar.update(batch.n_core)
    pass_seconds = time.perf_counter() - start
    if state.n_tokens == 0:
        raise CrosscoderUserError("the activation source yielded no tokens; check the cache or the dataset")

    table = latent_table(sae, state)
    join: JoinResult | None = None
    if crosscoder is not None and state.cofiring is not None:
        delta_decoder, _ = raw_decoder_difference(crosscoder, *pair)
        join = compute_join(state.cofiring, state.firing.count, delta_decoder,
                            crosscoder.relative_decoder_norms(*pair).detach(), thresholds, cc_classes)
        table = pd.concat([table, join.latents], axis=1)
        join.pairs.to_parquet(out / JOIN_PARQUET, index=False)
        join.pairs.to_csv(out / JOIN_CSV, index=False)
    table.to_parquet(out / TABLE_PARQUET, index=False)
    table.to_csv(out / TABLE_CSV, index=False)
    n_records = write_examples(
        out / EXAMPLES_FILE, state.examples.records(token_decoder(source.tokenizer), source.context_tokens)
    )

    base, ft = pair_info.base, pair_info.finetuned
    dead_fraction = float((state.firing.count == 0).double().mean())
    evals = state.stats.summary([DIFFERENCE_SAE], dead_fraction)
    if join is not None:
        cc_evals = state.cc_stats.summary([CROSSCODER])
        evals["per_model"][CROSSCODER] = cc_evals["per_model"][CROSSCODER]
        evals["crosscoder_l0"] = cc_evals["l0"]
    counts = table["class"].value_counts()
    summary: dict[str, Any] = {
        "kind": "difference",
        "sae": sae_path,
        "architecture": sae.cfg.architecture(),
        "d_sae": sae.cfg.d_sae,
        "d_model": d_model,
        "model_names": names,
        "difference_of": {"base": base, "finetuned": ft},
        "pair": {"first": base, "second": ft, "indices": list(pair)},
        "source": source.description,
        "token_budget": cfg.n_tokens,
        "n_tokens": state.n_tokens,
        "class_counts": {c: int(counts.get(c, 0)) for c in (LIVE, DEAD)},
        "evals": evals,
        "examples": {"n_latents": n_records, "n_top": cfg.n_top_examples, "window": cfg.window},
        "timing": {"pass_seconds": pass_seconds, "tokens_per_s": state.n_tokens / max(pass_seconds, 1e-9)},
        "config": cfg.to_dict(),
        "files": {"table": [TABLE_PARQUET, TABLE_CSV], "examples": EXAMPLES_FILE},
    }
    if join is not None:
        summary["join"] = {
            "crosscoder": crosscoder_path,
            "crosscoder_analysis": str(crosscoder_analysis) if crosscoder_analysis else None,
            "architecture": crosscoder.cfg.architecture(),
            "d_sae": crosscoder.cfg.d_sae,
            "activation_scaling_factors": crosscoder.activation_scaling_factors.tolist(),
            "decoder_space": "raw: d^ft / s_ft - d^base / s_base",
            **join.summary,
        }
        summary["thresholds"] = thresholds.to_dict()
        summary["files"]["join"] = [JOIN_PARQUET, JOIN_CSV]
    summary["report"] = report_spec(summary)
    write_json_atomic(out / SUMMARY_FILE, summary)
    if make_report:
        from sae_lens_crosscoder.analysis.report import build_report
        from sae_lens_crosscoder.difference.plots import write_difference_plots
        from sae_lens_crosscoder.difference.report_section import write_difference_view

        plots = write_difference_plots(table, summary, out)
        summary["files"]["plots"] = [name for name, _ in plots]
        summary["report"]["plots"] = [list(p) for p in plots]
        write_json_atomic(out / SUMMARY_FILE, summary)
        summary["files"]["sections"] = [str(p) for p in write_difference_view(out, crosscoder_analysis)]
        summary["files"]["report"] = build_report(out).name
        write_json_atomic(out / SUMMARY_FILE, summary)
    logger.info("analysed %d tokens of %s in %.1fs: %s", state.n_tokens, pair_info.label, pass_seconds,
                json.dumps(summary.get("join", {}).get("verdict_counts", summary["class_counts"])))
    return AnalysisResult(out, table, summary)


def model_names(pair: DifferencePair, source: ActivationSource) -> list[str]:
    """The SAE's record of its data's models, unless it does not fit the source."""
    source_names = list(source.model_names or [])
    if len(pair.model_names) == source.n_models:
        if source_names and source_names != pair.model_names:
            logger.warning("model names differ: difference SAE %s, activations %s; using the SAE's",
                           pair.model_names, source_names)
        return list(pair.model_names)
    return source_names or [f"model{m}" for m in range(source.n_models)]


def check_pair_option(cfg: AnalysisConfig, names: list[str], pair: tuple[int, int], info: DifferencePair) -> None:
    """`--pair` is the crosscoder analysis's option; here the SAE fixes the pair, and an
    explicit other one is a mistake worth saying so."""
    if list(cfg.pair) == [0, 1]:
        return  # the default, not a choice
    given = resolve_pair(list(cfg.pair), names)
    if given != pair:
        raise CrosscoderUserError(
            f"--pair {names[given[0]]},{names[given[1]]} does not apply: this SAE was trained on {info.label}; "
            "omit --pair (train a difference SAE on the other pair to compare it)"
        )


def check_joinable(crosscoder: Any, pair: DifferencePair, names: list[str], d_model: int) -> None:
    if not isinstance(crosscoder, CrosscoderMixin):
        raise CrosscoderUserError("--join-crosscoder must be a crosscoder (an SAE with a model axis), not a plain SAE")
    if crosscoder.d_model != d_model:
        raise CrosscoderUserError(
            f"the crosscoder has d_model {crosscoder.d_model} but the difference SAE {d_model}; join a crosscoder "
            "trained at the same hook of the same models"
        )
    cc_names = [str(n) for n in (crosscoder.cfg.metadata.get("model_names") or [])] if crosscoder.cfg.metadata else []
    missing = [n for n in (pair.base, pair.finetuned) if cc_names and n not in cc_names]
    if missing:
        raise CrosscoderUserError(
            f"the difference SAE is {pair.label} but the crosscoder compares {', '.join(cc_names)} (no "
            f"{', '.join(missing)}); join a crosscoder of the same pair"
        )
    if crosscoder.n_models != len(names) or (cc_names and cc_names != names):
        raise CrosscoderUserError(
            f"the crosscoder's models ({', '.join(cc_names) or crosscoder.n_models}) are not the activations' "
            f"({', '.join(names)}) in the same order; join a crosscoder trained on the same paired data"
        )


def crosscoder_classes(analysis_dir: str | Path | None) -> pd.Series | None:
    """The crosscoder analysis's `class` column by latent, if that analysis is given."""
    if analysis_dir is None:
        return None
    path = Path(analysis_dir) / TABLE_PARQUET
    if not path.is_file():
        raise CrosscoderUserError(
            f"{analysis_dir} has no {TABLE_PARQUET}; pass the crosscoder's finished analysis directory "
            "(sae-lens-crosscoder analyze --crosscoder ...)"
        )
    frame = pd.read_parquet(path, columns=None)
    if "class" not in frame.columns:
        return None
    return frame.set_index("latent")["class"].astype(str)


def latent_table(sae: Any, state: DifferencePass) -> pd.DataFrame:
    """Columns latent, dec_norm, freq, max_act, mean_act, class (`difference` for latents
    that fired, `dead` for the others)."""
    firing = state.firing
    data: dict[str, Any] = {
        "latent": np.arange(state.d_sae, dtype=np.int64),
        "dec_norm": sae.W_dec.detach().double().norm(dim=-1).cpu().numpy(),
    }
    data.update(firing_columns(firing.count, state.n_tokens, firing.max_act, firing.sum_act))
    data["class"] = np.where(firing.count.cpu().numpy() > 0, LIVE, DEAD)
    return pd.DataFrame(data)


def report_spec(summary: dict[str, Any]) -> dict[str, Any]:
    """The `report` object of summary.json that turns report.html into a difference SAE's page."""
    evals = summary["evals"]
    join = summary.get("join")
    facts: list[list[Any]] = [
        ["difference SAE", summary.get("sae")],
        ["architecture", summary["architecture"]],
        ["latents (d_sae)", summary["d_sae"]],
        ["encodes", f"{summary['difference_of']['finetuned']} − {summary['difference_of']['base']}"],
        ["models of the data", ", ".join(summary["model_names"])],
        ["tokens analysed", summary["n_tokens"]],
        ["L0", evals.get("l0")],
        ["dead fraction", evals.get("dead_fraction")],
    ]
    card_stats = [["freq", "freq"], ["max_act", "max"], ["mean_act", "mean"]]
    if join is not None:
        facts += [
            ["joined crosscoder", join.get("crosscoder")],
            ["crosscoder L0", evals.get("crosscoder_l0")],
            *[[f"join: {v}", n] for v, n in join["verdict_counts"].items()],
        ]
        card_stats += [["join_verdict", "join"], ["join_latent", "crosscoder latent"], ["join_cos", "cos"],
                       ["join_jaccard", "jaccard"], ["join_carried", "carried"], ["join_explained", "cc explains"],
                       ["join_best_cos_latent", "best-cos latent"], ["join_best_cos", "best cos"]]
    return {
        "title": f"Difference SAE: {summary['difference_of']['finetuned']} − {summary['difference_of']['base']}",
        "facts": facts,
        "plots": [],
        "card_stats": card_stats,
    }

