"""What people look at after eval: DVC headline metrics and plot CSVs, matplotlib PNGs, one HTML.

- metrics/headline.json (HEADLINE_KEYS of metrics/eval.json, same names) is the one DVC `metrics`
  file of dvc.yaml, so the metric columns of `dvc exp show`; every metrics/<stage>.json, this
  stage's full metrics/eval.json included, is a git-tracked plain output
  (`dvc metrics diff A B --targets metrics/eval.json` compares them);
- plots/eval_winrates.csv (comparison,winrate) and plots/eval_rewards.csv (model,length,reward)
  are the DVC plots declared in dvc.yaml (`dvc plots show/diff`); a missing value (no outcomes,
  no score) is left out rather than written empty, which DVC would draw as 0;
- reward distributions per model, reward vs length, win-rate bars as PNGs (MLflow artifacts);
- reports/eval.html: the PNGs inlined as base64 (one file to mail or attach); a provenance
  block first (MLflow eval and parent run ids, the recipe, git commit, the dvc.lock hashes of
  eval's inputs, the date); the gate decision, the metrics and diagnostics tables, side-by-side
  example generations (long texts folded), and the public papers it cites.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignflow.io import write_json

log = logging.getLogger(__name__)

WINRATES_CSV = Path("plots/eval_winrates.csv")
REWARDS_CSV = Path("plots/eval_rewards.csv")
HEADLINE_JSON = Path("metrics/headline.json")
# What compares experiments at a glance, in few `dvc exp show` columns: win rates vs SFT
# (the champion moves between experiments) with their bootstrap CIs, KL, the reward model's
# held-out accuracy, safety, IFEval accuracy and its paired difference from SFT, the gate. Missing ones (no pairs, no bootstrap) are left out.
HEADLINE_KEYS = (
    "gate_passed",
    "winrate_judge_vs_sft", "winrate_judge_vs_sft_ci_low", "winrate_judge_vs_sft_ci_high",
    "winrate_rm_vs_sft", "winrate_rm_vs_sft_ci_low", "winrate_rm_vs_sft_ci_high",
    "kl_vs_sft", "kl_vs_sft_k1", "rm_accuracy_heldout", "refusal_rate_harmful", "overrefusal_rate_benign",
    "ifeval_strict_policy", "ifeval_delta_vs_sft", "ifeval_delta_vs_sft_ci_low", "ifeval_delta_vs_sft_ci_high",
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


# ----------------------------------------------------------------------------- provenance

EVAL_STAGE = "eval"


def eval_inputs(lock_path: str | Path = "dvc.lock", dvc_yaml: str | Path = "dvc.yaml",
                stage: str = EVAL_STAGE) -> dict[str, Any]:
    """What `stage` read, as dvc.lock records it: {"digest", "inputs": [{path, md5, stage, stage_hash}]}.

    One input per dep of the stage (dvc.yaml) that another stage writes: the md5 dvc.lock holds
    for it, the stage that wrote it and that stage's dvc.lock entry digest
    (`tracking.dvc_stage_hashes`, the `dvc.lock.<stage>` tags of the MLflow runs). `digest` is
    one sha256 over the (path, md5) pairs: equal digests, equal data and models. Code deps are
    left to the git commit. {} without dvc.yaml or dvc.lock, or when either cannot be read.
    """
    import yaml

    from alignflow import tracking
    from alignflow.orchestration.dvc_graph import DvcGraphError, load_pipeline, overlaps

    lock_path, dvc_yaml = Path(lock_path), Path(dvc_yaml)
    if not (lock_path.is_file() and dvc_yaml.is_file()):
        return {}
    try:
        pipeline = load_pipeline(dvc_yaml)
        locked = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages") or {}
        stage_hashes = tracking.dvc_stage_hashes(lock_path)
    except (DvcGraphError, OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as err:
        log.warning("report: no dvc.lock provenance (%s)", err)
        return {}
    if stage not in pipeline.stages:
        return {}
    rows: list[dict[str, Any]] = []
    for dep in pipeline.stages[stage].deps:
        for writer in sorted(pipeline.upstream.get(stage, ())):
            if not any(overlaps(dep, out) for out in pipeline.stages[writer].outs):
                continue
            outs = (locked.get(writer) or {}).get("outs") or []
            md5 = next((o.get("md5") for o in outs if isinstance(o, dict) and o.get("path") == dep), None)
            rows.append({"path": dep, "md5": md5, "stage": writer, "stage_hash": stage_hashes.get(writer)})
    if not rows:
        return {}
    blob = json.dumps(sorted([r["path"], r["md5"]] for r in rows))
    return {"digest": hashlib.sha256(blob.encode()).hexdigest()[:12], "inputs": rows}


def _active_run_ids() -> tuple[str | None, str | None]:
    """(run id, parent run id) of MLflow's active run: the eval stage's run while it runs.
    MLflow is not imported for this (a report rendered outside a stage has no run)."""
    mlflow = sys.modules.get("mlflow")
    try:
        run = mlflow.active_run() if mlflow is not None else None
    except Exception:  # noqa: BLE001 - provenance must never fail the report
        return None, None
    if run is None:
        return None, None
    return run.info.run_id, (run.data.tags or {}).get("mlflow.parentRunId")


def collect_provenance(params: Any = None, *, eval_run_id: str | None = None, parent_run_id: str | None = None,
                       gate: Mapping[str, Any] | None = None, root: str | Path = ".",
                       now: datetime | None = None) -> dict[str, Any]:
    """Where a report comes from, read from what is at hand (anything unknown is None):

    - eval_run_id, parent_run_id: the arguments, else the gate record's (gate.record_decision
      writes the eval run's ids), else MLflow's active run and its parent tag, else
      ALIGNFLOW_PARENT_RUN_ID for the parent;
    - recipe: `tracking.parent_params` (the params the MLflow parent run shows: align.method,
      model.base, steps, learning rates, the method's section) of `params`, else of
      <root>/params.yaml; tracking_uri: where those runs are (credentials masked);
    - git_commit (`tracking.git_commit`), dvc: `eval_inputs` of <root>/dvc.lock, date (UTC).
    """
    from alignflow import tracking
    from alignflow.secrets import redact_secrets, redact_text

    root = Path(root)
    gate = gate or {}
    active_id, active_parent = _active_run_ids()
    eval_run_id = eval_run_id or gate.get("eval_run_id") or active_id
    parent_run_id = (parent_run_id or gate.get("parent_run_id") or active_parent
                     or os.environ.get(tracking.PARENT_ENV) or None)
    recipe: dict[str, Any] | None = None
    uri = None
    if params is None:
        from alignflow.config import ParamsError, load_params

        try:
            params = load_params(root / "params.yaml")
        except ParamsError as err:
            log.warning("report: no recipe in the provenance (%s)", str(err).splitlines()[0])
    if params is not None:
        recipe = redact_secrets(tracking.parent_params(params))
        uri = redact_text(tracking.tracking_uri(params))
    return {
        "date": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "eval_run_id": eval_run_id,
        "parent_run_id": parent_run_id,
        "tracking_uri": uri,
        "git_commit": tracking.git_commit(root),
        "recipe": recipe,
        "dvc": eval_inputs(root / "dvc.lock", root / "dvc.yaml"),
    }


# ----------------------------------------------------------------------------- HTML

# Public sources the page cites, by the short name used in the text.
REFERENCES = {
    "Ouyang et al. 2022": "L. Ouyang et al., “Training language models to follow instructions with human "
                          "feedback” (InstructGPT), NeurIPS 2022, arXiv:2203.02155.",
    "Gao, Schulman & Hilton 2022": "L. Gao, J. Schulman, J. Hilton, “Scaling Laws for Reward Model "
                                   "Overoptimization”, ICML 2023, arXiv:2210.10760.",
    "Singhal et al. 2023": "P. Singhal, T. Goyal, J. Xu, G. Durrett, “A Long Way to Go: Investigating Length "
                           "Correlations in RLHF”, arXiv:2310.03716.",
    "Askell et al. 2021": "A. Askell et al., “A General Language Assistant as a Laboratory for Alignment” "
                          "(helpful, honest, harmless), arXiv:2112.00861.",
    "Schulman 2020": "J. Schulman, “Approximating KL Divergence”, blog post, 2020, "
                     "http://joschu.net/blog/kl-approx.html (the k1 and k3 estimators).",
    "Efron & Tibshirani 1993": "B. Efron, R. Tibshirani, “An Introduction to the Bootstrap”, Chapman & Hall, "
                               "1993 (percentile intervals).",
    "Zhou et al. 2023": "J. Zhou et al., “Instruction-Following Evaluation for Large Language Models” (IFEval), "
                        "arXiv:2311.07911.",
}
# A text longer than this is folded: its first FOLD_CHARS characters show, the rest on a click.
FOLD_CHARS = 200

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.prov th{width:12em}table.prov td table{margin:.3em 0 0;font-size:1em}
code{font-size:.9em;background:#f5f5f5;padding:0 .2em;border-radius:3px}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
.gen{white-space:pre-wrap;max-width:28em;font-size:.85em}
summary{cursor:pointer;list-style:none}summary::-webkit-details-marker{display:none}
.more,.less{color:#0969da;white-space:nowrap}
details[open] .preview,details[open] .more,details:not([open]) .less{display:none}
.muted{color:#666}.refs{font-size:.85em}
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


def _fold(text: str) -> str:
    """Escaped text; over FOLD_CHARS characters, a <details> showing its start until clicked."""
    text = text or ""
    if len(text) <= FOLD_CHARS:
        return html.escape(text)
    return (f"<details><summary><span class=preview>{html.escape(text[:FOLD_CHARS].rstrip())}…</span> "
            f"<span class=more>[show all {len(text):,} characters]</span><span class=less>[show less]</span>"
            f"</summary>{html.escape(text)}</details>")


def _code(value: Any) -> str:
    return f"<code>{html.escape(str(value))}</code>"


def _unknown(why: str) -> str:
    return f"<span class=muted>unknown ({html.escape(why)})</span>"


def _input_row(row: Mapping[str, Any]) -> str:
    md5 = _code(row["md5"]) if row.get("md5") else _unknown("not in dvc.lock")
    digest = f" {_code(row['stage_hash'])}" if row.get("stage_hash") else ""
    return f"<tr><td>{_code(row['path'])}</td><td>{md5}</td><td>{html.escape(str(row.get('stage') or ''))}{digest}</td></tr>"


def _provenance_html(prov: Mapping[str, Any]) -> str:
    rows = [("generated", html.escape(str(prov.get("date") or "")) or _unknown("no date"))]
    rows.append(("MLflow eval run", _code(prov["eval_run_id"]) if prov.get("eval_run_id")
                 else _unknown("not rendered inside the eval stage's MLflow run")))
    rows.append(("MLflow parent run", _code(prov["parent_run_id"]) if prov.get("parent_run_id")
                 else _unknown("no pipeline run: the stage ran on its own")))
    if prov.get("tracking_uri"):
        rows.append(("MLflow tracking URI", _code(prov["tracking_uri"])))
    rows.append(("git commit", _code(prov["git_commit"]) if prov.get("git_commit") else _unknown("not a git checkout")))
    recipe = prov.get("recipe")
    rows.append(("recipe (params)", " ".join(_code(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
                                             for k, v in recipe.items()) if recipe
                 else _unknown("params.yaml not read")))
    dvc = prov.get("dvc") or {}
    if dvc.get("inputs"):
        table = "".join(_input_row(r) for r in dvc["inputs"])
        rows.append(("eval inputs (dvc.lock)",
                     f"digest {_code(dvc.get('digest'))}<table><tr><th>input</th><th>md5 in dvc.lock</th>"
                     "<th>written by (MLflow tag dvc.lock.&lt;stage&gt;)</th></tr>"
                     f"{table}</table>"))
    else:
        rows.append(("eval inputs (dvc.lock)", _unknown("no dvc.lock entries for them: the stage ran outside DVC")))
    return ("<h2>Provenance</h2><table class=prov>"
            + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")


def ifeval_section(ifeval: Mapping[str, Any], prompts: Sequence[str], responses: Mapping[str, Sequence[str]],
                   n_examples: int) -> dict[str, Any]:
    """The report's IFEval part from instruction_following.ifeval_metrics' table: accuracies per
    model, per constraint type, and examples where the candidate and SFT follow different constraints."""
    verdicts = ifeval.get("verdicts", {})
    examples = []
    if n_examples and "policy" in verdicts and "sft" in verdicts:
        differ = [i for i, (a, b) in enumerate(zip(verdicts["policy"], verdicts["sft"])) if a.strict != b.strict]
        examples = [{"prompt": prompts[i], "ids": list(verdicts["policy"][i].ids),
                     "responses": {m: texts[i] for m, texts in responses.items()},
                     "followed": {m: list(vs[i].strict) for m, vs in verdicts.items()}} for i in differ[:n_examples]]
    return {"accuracy": ifeval.get("accuracy", {}), "per_type": ifeval.get("per_type", {}), "examples": examples}


def _ifeval_html(section: Mapping[str, Any]) -> str:
    accs, per_type = section.get("accuracy", {}), section.get("per_type", {})
    models = list(accs)
    parts = ["<h2>Verifiable instruction following (IFEval)</h2><p>Held-out instructions with constraints a "
             "program checks (IFEval's checkers: Zhou et al. 2023). Strict: every constraint of the prompt followed "
             "by the response as written; loose: by a lenient variant (first or last line or markdown removed). "
             "Per type: the share of that type's constraints followed (strict).</p><table><tr><th></th>"]
    parts += [f"<th>{html.escape(m)}</th>" for m in models]
    parts.append("</tr>")
    for label, key in (("prompt-level strict", "strict"), ("prompt-level loose", "loose"),
                       ("instruction-level strict", "instruction_strict")):
        parts.append(f"<tr><td><b>{label}</b></td>" + "".join(_cell(accs[m].get(key)) for m in models) + "</tr>")
    for type_id, cells in per_type.items():
        n = max(c[0] for c in cells.values())
        parts.append(f"<tr><td>{html.escape(type_id)} <span class=muted>(n={n})</span></td>"
                     + "".join(_cell(cells[m][1]) if m in cells else "<td></td>" for m in models) + "</tr>")
    parts.append("</table>")
    if section.get("examples"):
        parts.append("<p>Prompts where the candidate and SFT follow different constraints (✓ followed, ✗ not, "
                     "in the order the prompt states them):</p><table><tr><th>prompt</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in models]
        parts.append("</tr>")
        for ex in section["examples"]:
            parts.append(f"<tr><td class=gen>{_fold(ex['prompt'])}<br><span class=muted>"
                         f"{html.escape(', '.join(ex['ids']))}</span></td>")
            for m in models:
                marks = " ".join("✓" if ok else "✗" for ok in ex["followed"].get(m, []))
                parts.append(f"<td class=gen><b>{marks}</b>\n{_fold(ex['responses'].get(m, ''))}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    return "".join(parts)


def render_html(
    *,
    title: str,
    metrics: dict[str, Any],
    diagnostics: dict[str, dict[str, float]],
    examples: Sequence[dict[str, Any]],
    gate: dict[str, Any] | None,
    images: dict[str, str | Path],
    notes: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    ifeval: Mapping[str, Any] | None = None,
) -> str:
    """One HTML page with everything inlined.

    diagnostics: model → {sign: rate}; examples: [{"prompt": str, "reference"?: str,
    "responses": {model: str}, "rewards"?: {model: float}}]; gate: GateDecision.to_dict() (+ extras);
    provenance: `collect_provenance()`'s dict, collected here (run ids from `gate`) when None.
    """
    if provenance is None:
        provenance = collect_provenance(gate=gate)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>The aligned policy (the candidate) against the SFT model, the base model and the registry's "
             "champion on held-out prompts, judged by win rates against SFT as InstructGPT was "
             "(Ouyang et al. 2022). Sources are listed under References at the end.</p>",
             _provenance_html(provenance)]

    if gate is not None:
        cls, verdict = ("pass", "PASSED — the candidate becomes champion when eval's outputs are committed (alignflow promote)") if gate.get("passed") else (
            "fail", "FAILED — champion unchanged")
        parts.append(f"<h2>Promotion gate</h2><p class={cls}>{verdict}</p>"
                     f"<p>baseline: {html.escape(str(gate.get('baseline')))}"
                     + (f", alignflow-policy v{html.escape(str(gate['candidate_version']))}"
                        if gate.get("candidate_version") else "") + "</p><ul>")
        parts += [f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", [])]
        parts.append("</ul><p>The gate reads the independent judge, not the reward model the policy was "
                     "optimized against: that score rises past the point where true quality falls "
                     "(Gao, Schulman &amp; Hilton 2022).</p>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")

    parts.append("<h2>Metrics</h2><p>Win rates: the share of prompts where the first model's response scores "
                 "higher (a tie counts ½), with 95% percentile bootstrap intervals over prompts "
                 "(Efron &amp; Tibshirani 1993). KL(candidate‖SFT): nats per response, k3 estimator "
                 "(Schulman 2020). Refusal on harmful prompts vs over-refusal on benign ones: harmless vs "
                 "helpful (Askell et al. 2021).</p><table><tr><th>metric</th><th>value</th></tr>")
    parts += [f"<tr><td>{html.escape(k)}</td>{_cell(v)}</tr>" for k, v in metrics.items()]
    parts.append("</table>")

    if diagnostics:
        models = list(diagnostics)
        signs = list(next(iter(diagnostics.values())))
        parts.append("<h2>Over-optimization diagnostics</h2><p>Share of responses showing each sign of a policy "
                     "that games its reward model, such as length, lists, apologies or refusals "
                     "(Gao, Schulman &amp; Hilton 2022; Singhal et al. 2023); a rise over SFT is the warning.</p>"
                     "<table><tr><th>sign</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in models]
        parts.append("</tr>")
        for sign in signs:
            parts.append(f"<tr><td>{html.escape(sign)}</td>")
            for m in models:
                parts.append(_cell(diagnostics[m].get(sign)))
            parts.append("</tr>")
        parts.append("</table>")

    if ifeval:
        parts.append(_ifeval_html(ifeval))

    if images:
        parts.append("<h2>Plots</h2>")
        parts += [_img(p, name) for name, p in images.items()]

    if examples:
        models = list(examples[0]["responses"])
        with_reference = any(ex.get("reference") for ex in examples)
        parts.append("<h2>Example generations</h2>"
                     f"<p>Texts over {FOLD_CHARS} characters are folded: click one to read it all.</p>"
                     "<table><tr><th>prompt</th>")
        if with_reference:
            parts.append("<th>reference</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in models]
        parts.append("</tr>")
        for ex in examples:
            parts.append(f"<tr><td class=gen>{_fold(ex['prompt'])}</td>")
            if with_reference:
                parts.append(f"<td class=gen>{_fold(ex.get('reference') or '')}</td>")
            for m in models:
                reward = (ex.get("rewards") or {}).get(m)
                head = f"<b>r = {reward:.2f}</b>\n" if reward is not None and math.isfinite(reward) else ""
                parts.append(f"<td class=gen>{head}{_fold(ex['responses'].get(m, ''))}</td>")
            parts.append("</tr>")
        parts.append("</table>")

    body = "".join(parts)
    parts.append("<h2>References</h2><ul class=refs>")  # the sources this page cites
    parts += [f"<li>{html.escape(short)}: {html.escape(full)}</li>" for short, full in REFERENCES.items()
              if html.escape(short) in body]
    parts.append("</ul></body></html>")
    return "".join(parts)
