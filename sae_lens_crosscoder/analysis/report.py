"""`report.html`: one self-contained page (inline CSS and JS, plots embedded as base64) that
opens from disk: the summary, the plots, any extension sections, and latent cards that can be
filtered and sorted by class.

Extension: later steps add sections by writing HTML fragments to
`<out>/report_sections/<name>.html` and calling `build_report(out)` again; fragments are
included verbatim, sorted by file name, between the plots and the latent cards.

Analyses of other dictionaries (e.g. a difference SAE) reuse the page by writing an optional
`report` object into `summary.json`: `title` (str), `facts` ([[name, value], ...]) in place
of the crosscoder facts, `plots` ([[file, caption], ...]) in place of the crosscoder plots,
and `card_stats` ([[column, label], ...]) shown on each latent card in place of the crosscoder's.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sae_lens_crosscoder.analysis.examples import EXAMPLES_FILE, read_examples
from sae_lens_crosscoder.analysis.plots import COS_SIM_PNG, DELTA_NORM_PNG, NU_SCATTER_PNG

REPORT_FILE = "report.html"
SECTIONS_DIR = "report_sections"
PLOTS = (
    (DELTA_NORM_PNG, "Relative decoder norm (Δnorm) of live latents"),
    (NU_SCATTER_PNG, "Latent Scaling: ν error vs ν reconstruction, by class, for each side"),
    (COS_SIM_PNG, "Decoder cosine similarity of shared latents"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:14px 24px}header h1{margin:0;font-size:1.35em}
nav{padding:6px 24px;background:#eceff1;font-size:.9em}nav a{margin-right:14px}
section{padding:8px 24px}h2{border-bottom:1px solid #ccc;padding-bottom:4px}
table.kv{border-collapse:collapse;font-size:.9em;margin:6px 0 14px}
table.kv td,table.kv th{border:1px solid #ddd;padding:3px 8px;text-align:left}
table.kv th{background:#f0f0f0}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
figure img{max-width:560px;border:1px solid #ddd;background:#fff}
figcaption{font-size:.85em;color:#555}
.controls{margin:8px 0 12px;font-size:.95em}.controls select{margin:0 12px 0 4px}
#cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;width:560px;box-sizing:border-box}
.card h3{margin:0 0 6px;font-size:1.05em}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:.8em;margin-left:6px;color:#fff;background:#888}
.badge.shared{background:#4c72b0}.badge.only{background:#dd8452}.badge.other{background:#9e9e9e}
.stats{font-size:.8em;color:#333;margin-bottom:6px;display:flex;flex-wrap:wrap;gap:2px 10px}.stats span{white-space:nowrap}
.ex{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8em;line-height:1.7;margin:2px 0;
    white-space:pre-wrap;word-break:break-all;border-left:3px solid #eee;padding-left:6px}
.ex .v{color:#888;margin-right:6px}
.tok{border-radius:2px}.tok.c{outline:1px solid #c44e52}
details{font-size:.9em;margin-top:4px}summary{cursor:pointer;color:#455a64}
.q{color:#666;font-size:.8em;margin-top:4px}
"""

SCRIPT = """
(function(){
  var box=document.getElementById('cards');
  if(!box){document.body.setAttribute('data-ready','1');return;}
  var cards=Array.prototype.slice.call(box.querySelectorAll('.card'));
  var filter=document.getElementById('class-filter'),sortKey=document.getElementById('sort-key');
  var count=document.getElementById('card-count');
  function num(c,k){var v=parseFloat(c.getAttribute('data-'+k));return isNaN(v)?null:v;}
  function apply(){
    var cls=filter.value,key=sortKey.value,desc=key.charAt(0)==='-',k=desc?key.slice(1):key;
    var sorted=cards.slice().sort(function(a,b){
      if(k==='class'){var x=a.getAttribute('data-class'),y=b.getAttribute('data-class');
        if(x!==y)return x<y?-1:1;return num(a,'latent')-num(b,'latent');}
      var x=num(a,k),y=num(b,k);
      if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
      return desc?y-x:x-y;});
    var shown=0;
    sorted.forEach(function(c){box.appendChild(c);
      var vis=cls==='all'||c.getAttribute('data-class')===cls;c.hidden=!vis;if(vis)shown++;});
    count.textContent=shown+' of '+cards.length+' latents shown';
  }
  filter.addEventListener('change',apply);sortKey.addEventListener('change',apply);
  apply();
  document.body.setAttribute('data-ready','1');
})();
"""

SORT_KEYS = (
    ("class", "class"),
    ("-freq", "frequency (high first)"),
    ("latent", "latent index"),
    ("-delta_norm", "Δnorm (high first)"),
    ("delta_norm", "Δnorm (low first)"),
    ("nu_error", "ν error (low first)"),
    ("nu_reconstruction", "ν reconstruction (low first)"),
    ("-max_act", "max activation (high first)"),
)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def select_cards(table: pd.DataFrame, max_cards: int) -> pd.DataFrame:
    """Exclusive classes first, then shared, then other; most frequent first within each."""
    priority = table["class"].map(lambda c: 0 if str(c).startswith("only:") else (1 if c == "shared" else 2))
    ordered = table.assign(_p=priority).sort_values(["_p", "freq", "latent"], ascending=[True, False, True])
    return ordered[ordered["freq"] > 0].head(max_cards).drop(columns="_p")


def _attr(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    number = float(value)
    return "nan" if math.isnan(number) else repr(number)


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _tokens_html(example: dict[str, Any], scale: float) -> str:
    parts = []
    for i, (tok, act) in enumerate(zip(example["tokens"], example["acts"])):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, act / scale))
        shown = tok.replace("\n", "⏎") if tok else "·"  # unknown token ids still show their activation
        style = f' style="background:rgba(255,140,0,{alpha:.2f})"' if alpha > 0 else ""
        cls = "tok c" if i == example["center"] else "tok"
        parts.append(f'<span class="{cls}"{style} title="{act:.4g}">{html.escape(shown)}</span>')
    return "".join(parts)


def example_line(example: dict[str, Any], scale: float) -> str:
    return (
        f'<div class="ex"><span class="v">{example["value"]:.3g}</span>'
        f"{_tokens_html(example, scale)}</div>"
    )


def _card(
    row: pd.Series,
    record: dict[str, Any] | None,
    names: list[str],
    pair: dict[str, Any],
    card_stats: Sequence[tuple[str, str]] | None = None,
) -> str:
    cls = str(row["class"])
    badge = "only" if cls.startswith("only:") else cls
    attrs: dict[str, Any] = {"class": cls, "latent": int(row["latent"])}
    for key in ("freq", "delta_norm", "nu_error", "nu_reconstruction", "max_act"):
        attrs[key] = row[key] if key in row.index else float("nan")
    data = " ".join(f'data-{k}="{html.escape(_attr(v))}"' for k, v in attrs.items())
    def value(column: str) -> float | None:
        # tables written by other tools may lack some columns
        return float(row[column]) if column in row.index else None

    norms = "".join(f"<span>‖d‖ {html.escape(n)}: {fmt(value(f'dec_norm_{n}'))}</span>" for n in names
                    if f"dec_norm_{n}" in row.index)
    stats = (
        f"{norms}<span>Δnorm {fmt(value('delta_norm'))}</span><span>cos {fmt(value('cos_sim'))}</span>"
        f"<span>freq {fmt(value('freq'))}</span><span>max {fmt(value('max_act'))}</span>"
        f"<span>ν<sup>ε</sup> {fmt(value('nu_error'))}</span>"
        f"<span>ν<sup>r</sup> {fmt(value('nu_reconstruction'))}</span>"
        f"<span>reverse ν<sup>ε</sup>/ν<sup>r</sup> {fmt(value('nu_error_reverse'))} / "
        f"{fmt(value('nu_reconstruction_reverse'))}</span>"
    )
    if card_stats is not None:
        stats = "".join(
            f"<span>{html.escape(label)} {html.escape(fmt(_cell(row[column])))}</span>"
            for column, label in card_stats
            if column in row.index
        )
    body = ""
    if record is not None:
        scale = float(row["max_act"]) if "max_act" in row.index and float(row["max_act"]) > 0 else 1.0
        top = "".join(example_line(e, scale) for e in record.get("top", []))
        body += f'<div class="top">{top or "<em>no examples</em>"}</div>'
        quantiles = record.get("quantiles", [])
        if quantiles:
            inner = "".join(
                f'<div class="q">activations {q["low"]:.3g} – {q["high"]:.3g}</div>'
                + "".join(example_line(e, scale) for e in q["examples"])
                for q in reversed(quantiles)
            )
            body += f"<details><summary>samples by activation quantile</summary>{inner}</details>"
    return (
        f'<article class="card" {data}><h3>Latent {int(row["latent"])}'
        f'<span class="badge {html.escape(badge)}">{html.escape(cls)}</span></h3>'
        f'<div class="stats">{stats}</div>{body}</article>'
    )


def _cell(value: Any) -> Any:
    """A table cell as a plain Python value, so fmt formats numpy scalars like floats."""
    return value.item() if hasattr(value, "item") else value


def kv_table(rows: list[tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(fmt(v))}</td></tr>" for k, v in rows
    ) + "</table>"


def _evals_table(evals: dict[str, Any]) -> str:
    per_model = evals.get("per_model", {})
    keys: list[str] = []
    for values in per_model.values():
        keys += [k for k in values if k not in keys]
    head = "<tr><th>model</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{fmt(values.get(k))}</td>" for k in keys) + "</tr>"
        for name, values in per_model.items()
    )
    return f'<table class="kv">{head}{rows}</table>'


def build_report(out_dir: str | Path, max_cards: int | None = None) -> Path:
    """(Re)write `<out_dir>/report.html` from the files of an analysis and every fragment in
    `<out_dir>/report_sections/*.html`. Returns the report's path."""
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "latents.parquet")
    names = list(summary["model_names"])
    pair = summary["pair"]
    cap = max_cards if max_cards is not None else int(summary.get("config", {}).get("report_max_cards", 200))
    chosen = select_cards(table, cap)
    records = read_examples(out / EXAMPLES_FILE, set(chosen["latent"].astype(int).tolist()))

    custom = summary.get("report") or {}
    title = custom.get("title") or f"Crosscoder diff: {pair['first']} vs {pair['second']}"
    nav = ['<a href="#summary">Summary</a>', '<a href="#plots">Plots</a>']
    evals = summary.get("evals", {})
    facts = [tuple(item) for item in custom["facts"]] if custom.get("facts") else [
        ("crosscoder", summary.get("crosscoder")),
        ("architecture", summary.get("architecture")),
        ("latents (d_sae)", summary.get("d_sae")),
        ("models", ", ".join(names)),
        ("compared pair", f"{pair['first']} (Δnorm 0) vs {pair['second']} (Δnorm 1)"),
        ("tokens analysed", summary.get("n_tokens")),
        ("token budget", summary.get("token_budget") if summary.get("token_budget") is not None else "whole source"),
        ("selection rule", summary.get("rule")),
        ("L0", evals.get("l0")),
        ("dead fraction", evals.get("dead_fraction")),
    ]
    thresholds = [(k, v) for k, v in summary.get("thresholds", {}).items()]
    classes = list(summary.get("class_counts", {}).items())
    parts = [
        f'<section id="summary"><h2>Summary</h2>{kv_table(facts)}'
        f"<h3>Latents per class</h3>{kv_table(classes)}"
        f"<h3>Per-model evals</h3>{_evals_table(evals)}"
        f"<h3>Thresholds</h3>{kv_table(thresholds)}</section>"
    ]
    figures = "".join(
        f'<figure><img src="{_image(out / name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in (custom.get("plots") or PLOTS)
        if (out / name).is_file()
    )
    parts.append(f'<section id="plots"><h2>Plots</h2>{figures or "<p>no plots</p>"}</section>')

    sections_dir = out / SECTIONS_DIR
    for fragment in sorted(sections_dir.glob("*.html")) if sections_dir.is_dir() else []:
        anchor = f"ext-{fragment.stem}"
        nav.append(f'<a href="#{html.escape(anchor)}">{html.escape(fragment.stem)}</a>')
        parts.append(
            f'<section class="extension" id="{html.escape(anchor)}" data-source="{html.escape(fragment.name)}">'
            f"{fragment.read_text()}</section>"
        )

    nav.append('<a href="#latents">Latents</a>')
    class_options = "".join(
        f'<option value="{html.escape(c)}">{html.escape(c)} ({int((chosen["class"] == c).sum())})</option>'
        for c in sorted(chosen["class"].unique())
    )
    sort_options = "".join(f'<option value="{k}">{html.escape(label)}</option>' for k, label in SORT_KEYS)
    card_stats = [(str(c), str(label)) for c, label in custom["card_stats"]] if custom.get("card_stats") else None
    cards = "".join(
        _card(row, records.get(int(row["latent"])), names, pair, card_stats) for _, row in chosen.iterrows()
    )
    parts.append(
        f'<section id="latents"><h2>Latents</h2>'
        f"<p>{len(chosen)} of {len(table)} latents shown as cards (exclusive classes first, then shared, "
        f"then other; most frequent first). The full table is in latents.parquet / latents.csv.</p>"
        f'<div class="controls">class <select id="class-filter"><option value="all">all</option>{class_options}</select>'
        f'sort by <select id="sort-key">{sort_options}</select><span id="card-count"></span></div>'
        f'<div id="cards">{cards}</div></section>'
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1></header><nav>{''.join(nav)}</nav>"
        f"{''.join(parts)}<script>{SCRIPT}</script></body></html>"
    )
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
