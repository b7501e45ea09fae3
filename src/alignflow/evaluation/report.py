"""What people look at after eval: DVC headline metrics and plot CSVs, matplotlib PNGs, one HTML.

- metrics/headline.json (HEADLINE_KEYS of metrics/eval.json, same names) is the one DVC `metrics`
  file of dvc.yaml, so the metric columns of `dvc exp show`; every metrics/<stage>.json, this
  stage's full metrics/eval.json included, is a git-tracked plain output
  (`dvc metrics diff A B --targets metrics/eval.json` compares them);
- plots/eval_winrates.csv (comparison,winrate) and plots/eval_rewards.csv (model,length,reward)
  are the DVC plots declared in dvc.yaml (`dvc plots show/diff`); a missing value (no outcomes,
  no score) is left out rather than written empty, which DVC would draw as 0;
- reward distributions per model, reward vs length, win-rate bars as PNGs (MLflow artifacts);
- reports/eval.html: the PNGs inlined as base64 (one file to mail or attach), the metrics and
  diagnostics tables, side-by-side example generations, and the gate decision.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignflow.io import write_json

WINRATES_CSV = Path("plots/eval_winrates.csv")
REWARDS_CSV = Path("plots/eval_rewards.csv")
HEADLINE_JSON = Path("metrics/headline.json")
# What compares experiments at a glance, in few `dvc exp show` columns: win rates vs SFT
# (the champion moves between experiments) with their bootstrap CIs, KL, the reward model's
# held-out accuracy, safety, the gate. Missing ones (no pairs, no bootstrap) are left out.
HEADLINE_KEYS = (
    "gate_passed",
    "winrate_judge_vs_sft", "winrate_judge_vs_sft_ci_low", "winrate_judge_vs_sft_ci_high",
    "winrate_rm_vs_sft", "winrate_rm_vs_sft_ci_low", "winrate_rm_vs_sft_ci_high",
    "kl_vs_sft", "rm_accuracy_heldout", "refusal_rate_harmful", "overrefusal_rate_benign",
)


def write_headline(metrics: dict[str, Any], path: str | Path = HEADLINE_JSON) -> dict[str, Any]:
    """metrics/headline.json: the HEADLINE_KEYS that `metrics` has a finite number for."""
    headline = {k: metrics[k] for k in HEADLINE_KEYS
                if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}
    write_json(path, headline)
    return headline


def write_winrates_csv(winrates: dict[str, float], path: str | Path = WINRATES_CSV) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["comparison", "winrate"])
        for name, value in winrates.items():
            if _num(value):
                w.writerow([name, _num(value)])
    return path


def write_rewards_csv(rows: Sequence[tuple[str, int, float]], path: str | Path = REWARDS_CSV) -> Path:
    """rows: (model, response length in words, reward)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "length", "reward"])
        for model, length, reward in rows:
            if _num(reward):
                w.writerow([model, int(length), _num(reward)])
    return path


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.6g}"


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: stages run in containers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _label(ax, xlabel: str, ylabel: str, title: str, legend: bool) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)


def plot_reward_distributions(rewards: dict[str, Sequence[float]], path: str | Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    finite = [r for rs in rewards.values() for r in rs if math.isfinite(r)]
    bins = 20 if finite else 1
    for model, rs in rewards.items():
        vals = [r for r in rs if math.isfinite(r)]
        if vals:
            ax.hist(vals, bins=bins, range=(min(finite), max(finite) + 1e-9), alpha=0.45,
                    label=f"{model} (mean {sum(vals) / len(vals):.2f})")
    _label(ax, "reward-model score", "responses", "Reward distribution per model", legend=bool(finite))
    return _save(plt, fig, path)


def plot_reward_vs_length(points: dict[str, tuple[Sequence[int], Sequence[float]]], path: str | Path) -> Path:
    """A rising cloud for the candidate only is the length-hacking sign (reward bought with words)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for model, (lengths, rewards) in points.items():
        ax.scatter(lengths, rewards, s=12, alpha=0.6, label=model)
    _label(ax, "response length (words)", "reward-model score", "Reward vs length", legend=bool(points))
    return _save(plt, fig, path)


def plot_winrates(winrates: dict[str, float], cis: dict[str, tuple[float, float]], path: str | Path) -> Path:
    plt = _plt()
    names = [n for n, v in winrates.items() if v is not None and math.isfinite(v)]
    values = [winrates[n] for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(len(names), 1)), dpi=100)
    xerr = None
    if names and all(n in cis and all(math.isfinite(c) for c in cis[n]) for n in names):
        xerr = [[v - cis[n][0] for n, v in zip(names, values)], [cis[n][1] - v for n, v in zip(names, values)]]
    ax.barh(names, values, xerr=xerr, color="#4c78a8", capsize=3)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties = ½), 95% bootstrap CI")
    ax.invert_yaxis()
    return _save(plt, fig, path)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
.gen{white-space:pre-wrap;max-width:28em;font-size:.85em}
img{max-width:100%;margin:.5em 0}
"""


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "<td class=num>–</td>"
        return f"<td class=num>{value:.4g}</td>" if isinstance(value, float) else f"<td class=num>{value}</td>"
    if value is None:
        return "<td class=num>–</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _img(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(
    *,
    title: str,
    metrics: dict[str, Any],
    diagnostics: dict[str, dict[str, float]],
    examples: Sequence[dict[str, Any]],
    gate: dict[str, Any] | None,
    images: dict[str, str | Path],
    notes: Sequence[str] = (),
) -> str:
    """One HTML page with everything inlined.

    diagnostics: model → {sign: rate}; examples: [{"prompt": str, "reference"?: str,
    "responses": {model: str}, "rewards"?: {model: float}}]; gate: GateDecision.to_dict() (+ extras).
    """
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]

    if gate is not None:
        cls, verdict = ("pass", "PASSED — the candidate becomes champion when eval's outputs are committed (alignflow promote)") if gate.get("passed") else (
            "fail", "FAILED — champion unchanged")
        parts.append(f"<h2>Promotion gate</h2><p class={cls}>{verdict}</p>"
                     f"<p>baseline: {html.escape(str(gate.get('baseline')))}"
                     + (f", alignflow-policy v{html.escape(str(gate['candidate_version']))}"
                        if gate.get("candidate_version") else "") + "</p><ul>")
        parts += [f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", [])]
        parts.append("</ul>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")

    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    parts += [f"<tr><td>{html.escape(k)}</td>{_cell(v)}</tr>" for k, v in metrics.items()]
    parts.append("</table>")

    if diagnostics:
        models = list(diagnostics)
        signs = list(next(iter(diagnostics.values())))
        parts.append("<h2>Over-optimization diagnostics</h2><p>Share of responses showing each sign "
                     "(Gao et al. 2023; Singhal et al. 2023); a rise over SFT is the warning.</p><table><tr><th>sign</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in models]
        parts.append("</tr>")
        for sign in signs:
            parts.append(f"<tr><td>{html.escape(sign)}</td>")
            for m in models:
                parts.append(_cell(diagnostics[m].get(sign)))
            parts.append("</tr>")
        parts.append("</table>")

    if images:
        parts.append("<h2>Plots</h2>")
        parts += [_img(p, name) for name, p in images.items()]

    if examples:
        models = list(examples[0]["responses"])
        parts.append("<h2>Example generations</h2><table><tr><th>prompt</th>")
        if any(ex.get("reference") for ex in examples):
            parts.append("<th>reference</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in models]
        parts.append("</tr>")
        for ex in examples:
            parts.append(f"<tr><td class=gen>{html.escape(ex['prompt'])}</td>")
            if any(e.get("reference") for e in examples):
                parts.append(f"<td class=gen>{html.escape(ex.get('reference') or '')}</td>")
            for m in models:
                reward = (ex.get("rewards") or {}).get(m)
                head = f"<b>r = {reward:.2f}</b>\n" if reward is not None and math.isfinite(reward) else ""
                parts.append(f"<td class=gen>{head}{html.escape(ex['responses'].get(m, ''))}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
