"""The main job: the end-to-end diff on the built-in model organism, on CPU.

    sae-lens-crosscoder demo --out demo_out

1. Build (or reuse) the organism: a tiny Gemma-2 base model, its SFT chat model and a SimPO
   fine-tune with planted behaviours (`sae_lens_crosscoder.organism`).
2. Run the registered diff `organism-it-vs-simpo`: paired caches, pt–simpo and pt–it
   crosscoders, difference SAEs, analysis, rule labelling, category shift, report.
3. Repeat the category shift with difference latents (simpo − pt vs it − pt).
4. Score every dictionary against the ground truth: for each planted behaviour, the latent
   that best fires on its positions (precision, recall), within the simpo-only set and
   among all latents; write it to `summary.json` and as a section of `report.html`.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from sae_lens_crosscoder.analysis.ground_truth import RECOVERED_PRECISION, RECOVERED_RECALL, firing_overlap
from sae_lens_crosscoder.diffs.organism import DemoScale, difference_sets, organism_diff
from sae_lens_crosscoder.diffs.pipeline import DiffLayout, run_diff, write_diff_report
from sae_lens_crosscoder.diffs.registry import register_diff
from sae_lens_crosscoder.labelling.labels import read_labels
from sae_lens_crosscoder.labelling.selection import AnalysisDir, select_latents
from sae_lens_crosscoder.organism import BEHAVIOURS, OrganismConfig, build_organism, load_eval_set

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"
# each dictionary, scored against the planted positions: (key, description)
VIEWS = {
    "crosscoder_simpo_only": "crosscoder pt–simpo, simpo-only latents (the study's view)",
    "crosscoder_any_latent": "crosscoder pt–simpo, any latent",
    "direct_crosscoder_simpo_only": "crosscoder it–simpo, simpo-only latents",
    "direct_crosscoder_any_latent": "crosscoder it–simpo, any latent",
    "difference_simpo_minus_pt": "difference SAE simpo − pt",
    "difference_simpo_minus_it": "difference SAE simpo − it",
    "difference_it_minus_pt_control": "difference SAE it − pt (control: no planted behaviour)",
}


def run_demo(out: str | Path = "demo_out", organism: str | Path = "organism", scale: str = "full",
             progress: bool = True) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(out)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    paths = organism_for(organism, OrganismConfig.preset("demo" if scale == "full" else "small"), progress)
    timings["organism"] = time.perf_counter() - t

    t = time.perf_counter()
    diff = register_diff(organism_diff(paths, DemoScale.preset(scale), root=str(out)), overwrite=True)
    run = run_diff(diff, root=out)
    timings["diff_chain"] = time.perf_counter() - t
    layout = DiffLayout(out)

    t = time.perf_counter()
    difference_shift = shift_of_difference_latents(diff, layout)
    timings["difference_shift"] = time.perf_counter() - t

    t = time.perf_counter()
    recovery = score_against_ground_truth(diff, layout, paths)
    timings["ground_truth"] = time.perf_counter() - t

    crosscoder_shift = planted_shift(layout.shift_dir)
    summary = {
        "diff": diff.name,
        "organism": str(paths.root),
        "scale": scale,
        "behaviours": recovery,
        "recovered": {
            view: [b for b, r in recovery.items() if r[view]["recovered"]]
            for view in VIEWS
        },
        "category_shift": {"crosscoder_sets": crosscoder_shift, "difference_sets": difference_shift},
        "criteria": {"precision_min": RECOVERED_PRECISION, "recall_min": RECOVERED_RECALL,
                     "best_latent": "highest F1 of firing (activation > 0) against the behaviour's positions"},
        "steps": [r.__dict__ for r in run.records],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    summary["timings_s"]["total"] = round(time.perf_counter() - start, 1)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    sections = out / "report_sections"
    sections.mkdir(exist_ok=True)
    (sections / "05_planted_behaviours.html").write_text(recovery_html(summary))
    write_diff_report(diff, layout)
    return summary


def organism_for(root: str | Path, cfg: OrganismConfig, progress: bool) -> Any:
    """Build or reuse the organism; one built by another version or config is rebuilt."""
    from sae_lens_crosscoder.errors import CrosscoderUserError

    try:
        return build_organism(root, cfg, progress=progress)
    except CrosscoderUserError as exc:
        if "force=True" not in str(exc):
            raise
        logger.warning("rebuilding the organism in %s: %s", root, exc)
        return build_organism(root, cfg, force=True, progress=progress)


# ---- the second view of the shift ---------------------------------------------------------
def shift_of_difference_latents(diff: Any, layout: DiffLayout) -> dict[str, Any]:
    """Label the difference SAEs' live latents and compare them like the crosscoder sets."""
    from sae_lens_crosscoder.labelling.options import make_labeller
    from sae_lens_crosscoder.labelling.run import label_analysis
    from sae_lens_crosscoder.labelling.shift import category_shift, write_shift
    from sae_lens_crosscoder.labelling.taxonomy import get_taxonomy

    taxonomy = get_taxonomy(diff.taxonomy)
    labeller = make_labeller(diff.labeller.kind, diff.labeller.options)
    frames = []
    for side in difference_sets(diff):
        path = layout.labels_path(side)
        label_analysis(layout.analysis_dir(side.crosscoder), taxonomy, labeller, side.resolved_selection(),
                       out=path, set_name=side.name)
        frames.append(read_labels(path))
    set_a, set_b = difference_sets(diff)
    frame = category_shift(frames[0], frames[1], taxonomy, share=diff.share, weight=diff.weight,
                           n_bootstrap=diff.n_bootstrap, seed=diff.seed, names=(set_a.name, set_b.name))
    shift_dir = layout.root / "shift_difference"
    write_shift(shift_dir, frame, diff.reference_values(), title=f"{set_b.name} vs {set_a.name}")
    return planted_shift(shift_dir)


def planted_shift(shift_dir: Path) -> dict[str, Any]:
    """Each planted category's share in both sets, relative change and interval."""
    from sae_lens_crosscoder.labelling.shift import read_shift

    frame, _ = read_shift(shift_dir)
    out = {}
    for behaviour in BEHAVIOURS:
        row = frame.loc[frame["category"] == behaviour.category]
        if row.empty:
            continue
        record = {k: _plain(v) for k, v in row.iloc[0].to_dict().items()}
        record["up"] = bool(record.get("share_b", 0) > record.get("share_a", 0))
        out[behaviour.category] = record
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


# ---- ground truth ---------------------------------------------------------------------------
@torch.no_grad()
def score_against_ground_truth(diff: Any, layout: DiffLayout, paths: Any) -> dict[str, dict[str, Any]]:
    """Run pt, it and simpo on the held-out chats, encode with each dictionary, and find
    each behaviour's best latent."""
    from sae_lens import SAE

    from sae_lens_crosscoder.loading import load_models, stop_layer

    tokens, masks = load_eval_set(paths)
    configs = diff.run_configs(layout.root)
    models = {}
    for name in ("pt-simpo", "pt-it"):
        cfg = configs[name]
        for model_name, model in zip(cfg.model_names, load_models(cfg)):
            models[model_name] = model
    hook = configs["pt-simpo"].hook_name
    acts = {}
    for model_name, model in models.items():
        _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=stop_layer(model, hook))
        acts[model_name] = cache[hook].float()
    tokenizer = models[configs["pt-simpo"].model_names[0]].tokenizer
    valid = ~torch.isin(tokens, torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long))
    pt, it, simpo = (diff.models[k] for k in ("pt", "it", "simpo"))

    def crosscoder_overlap(name: str, first: str, second: str) -> Any:
        crosscoder = SAE.load_from_disk(configs[name].output_path).eval()
        return firing_overlap(crosscoder.encode, torch.stack([acts[first], acts[second]], dim=2), valid, masks)

    def difference_overlap(name: str, base: str, finetuned: str) -> Any:
        sae = SAE.load_from_disk(configs[name].output_path).eval()
        return firing_overlap(sae.encode, acts[finetuned] - acts[base], valid, masks)

    simpo_rule = diff.set_b.resolved_selection()
    overlaps = {
        "crosscoder": crosscoder_overlap("pt-simpo", pt, simpo),
        "direct_crosscoder": crosscoder_overlap("it-simpo", it, simpo),
        "difference_simpo_minus_pt": difference_overlap("simpo-minus-pt", pt, simpo),
        "difference_simpo_minus_it": difference_overlap("simpo-minus-it", it, simpo),
        "difference_it_minus_pt_control": difference_overlap("it-minus-pt", pt, it),
    }
    simpo_only = {
        "crosscoder": select_latents(AnalysisDir(layout.analysis_dir("pt-simpo")), simpo_rule),
        "direct_crosscoder": select_latents(AnalysisDir(layout.analysis_dir("it-simpo")), simpo_rule),
    }
    joins = {name: _join_verdicts(layout.analysis_dir(name)) for name in ("simpo-minus-pt", "simpo-minus-it")}

    results: dict[str, dict[str, Any]] = {}
    for behaviour in BEHAVIOURS:
        name = behaviour.name
        row: dict[str, Any] = {"category": behaviour.category, "positions": overlaps["crosscoder"].positions[name]}
        for key in ("crosscoder", "direct_crosscoder"):
            row[f"{key}_simpo_only"] = overlaps[key].match(name, simpo_only[key]).to_dict()
            row[f"{key}_any_latent"] = overlaps[key].match(name).to_dict()
        for key in ("difference_simpo_minus_pt", "difference_simpo_minus_it", "difference_it_minus_pt_control"):
            row[key] = overlaps[key].match(name).to_dict()
        for key, sae_name in (("simpo_minus_pt", "simpo-minus-pt"), ("simpo_minus_it", "simpo-minus-it")):
            latent = row[f"difference_{key}"]["latent"]
            row[f"join_verdict_{key}"] = joins[sae_name].get(latent) if latent is not None else None
        results[name] = row
    return results


def _join_verdicts(analysis: Path) -> dict[int, str]:
    import pandas as pd

    table = analysis / "latents.parquet"
    if not table.is_file():
        return {}
    frame = pd.read_parquet(table)
    if "join_verdict" not in frame:
        return {}
    return {int(r.latent): str(r.join_verdict) for r in frame.itertuples()}


# ---- report section -------------------------------------------------------------------------
def recovery_html(summary: dict[str, Any]) -> str:
    rows = []
    for name, result in summary["behaviours"].items():
        for key, label in VIEWS.items():
            m = result[key]
            mark = "✔" if m["recovered"] else "✘"
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(label)}</td><td>{m['latent']}</td>"
                f"<td>{m['precision']:.2f}</td><td>{m['recall']:.2f}</td><td>{mark}</td></tr>"
            )
    shift_rows = []
    for view, shifts in summary["category_shift"].items():
        for category, rec in shifts.items():
            shift_rows.append(
                f"<tr><td>{html.escape(view)}</td><td>{html.escape(category)}</td>"
                f"<td>{rec.get('share_a', 0):.2f}</td><td>{rec.get('share_b', 0):.2f}</td>"
                f"<td>{'up' if rec['up'] else 'not up'}</td></tr>"
            )
    crit = summary["criteria"]
    return f"""<section><h2>Planted behaviours: what each view recovered</h2>
<p style="font-size:13px">Ground truth: the positions where each planted behaviour acts in held-out chats.
A behaviour is recovered by a view when its best latent (highest F1) fires mainly there
(precision ≥ {crit['precision_min']}) and covers recall ≥ {crit['recall_min']}.</p>
<table border="1" cellpadding="4" style="border-collapse:collapse;font-size:13px">
<tr><th>behaviour</th><th>view</th><th>best latent</th><th>precision</th><th>recall</th><th>recovered</th></tr>
{''.join(rows)}</table>
<h3>Planted categories in the category shift (simpo relative to it)</h3>
<table border="1" cellpadding="4" style="border-collapse:collapse;font-size:13px">
<tr><th>latent sets</th><th>category</th><th>share it</th><th>share simpo</th><th></th></tr>
{''.join(shift_rows)}</table></section>"""


# ---- CLI ------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (report.html, summary.json)")
    parser.add_argument("--organism", default="organism", help="where the organism is built or reused")
    parser.add_argument("--scale", choices=("full", "quick"), default="full",
                        help="full: the demo organism and dictionaries; quick: tiny, for a smoke test")


def run(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, args.organism, args.scale)
    for view, names in summary["recovered"].items():
        print(f"{view}: recovered {len(names)}/{len(BEHAVIOURS)} planted behaviours {names}")
    print(f"report: {Path(args.out) / 'report.html'} ({summary['timings_s']['total']} s)")
    return 0
