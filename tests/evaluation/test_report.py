"""Report rendering: DVC plot CSVs, PNGs, and the self-contained HTML."""

import base64
import csv
import html
import math
import subprocess
import sys
import types
from datetime import datetime, timezone

import yaml

from alignflow import tracking
from alignflow.evaluation import report


def test_csvs_have_the_dvc_plot_columns(tmp_path):
    # A missing value is left out: DVC would draw an empty cell as a 0 bar / point.
    w = report.write_winrates_csv({"policy vs sft (judge)": 0.625, "policy vs base (rm)": math.nan}, tmp_path / "w.csv")
    rows = list(csv.DictReader(open(w)))
    assert rows == [{"comparison": "policy vs sft (judge)", "winrate": "0.625"}]
    r = report.write_rewards_csv([("sft", 12, 0.5), ("policy", 30, -1.25), ("base", 3, None)], tmp_path / "r.csv")
    assert list(csv.reader(open(r))) == [["model", "length", "reward"], ["sft", "12", "0.5"], ["policy", "30", "-1.25"]]


def test_headline_is_the_dvc_metrics_subset_of_eval_json(tmp_path):
    import json

    metrics = {"gate_passed": 1, "winrate_judge_vs_sft": 0.5625, "winrate_judge_vs_sft_ci_low": 0.5,
               "winrate_judge_vs_sft_ci_high": 0.6875, "winrate_rm_vs_sft": math.nan, "kl_vs_sft": 0.01,
               "distinct_2": 0.9, "winrate_judge_vs_champion": 0.5, "n_prompts": 8}
    headline = report.write_headline(metrics, tmp_path / "headline.json")
    assert json.loads((tmp_path / "headline.json").read_text()) == headline == {
        "gate_passed": 1, "winrate_judge_vs_sft": 0.5625, "winrate_judge_vs_sft_ci_low": 0.5,
        "winrate_judge_vs_sft_ci_high": 0.6875, "kl_vs_sft": 0.01}
    assert list(headline) == [k for k in report.HEADLINE_KEYS if k in headline]  # the declared order


def test_figures_and_html_are_self_contained(tmp_path):
    rewards = {"sft": [0.1, 0.2, -0.3], "policy": [0.5, 0.4, float("nan")]}
    imgs = {
        "win rates": report.plot_winrates({"policy vs sft (rm)": 0.75, "policy vs sft (judge)": math.nan},
                                          {"policy vs sft (rm)": (0.5, 1.0)}, tmp_path / "w.png"),
        "rewards": report.plot_reward_distributions(rewards, tmp_path / "r.png"),
        "length": report.plot_reward_vs_length({"sft": ([3, 4, 5], [0.1, 0.2, -0.3])}, tmp_path / "l.png"),
    }
    for p in imgs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.render_html(
        title="eval",
        metrics={"winrate_rm_vs_sft": 0.75, "kl_vs_sft": math.nan, "gate_passed": 1},
        diagnostics={"sft": {"apology": 0.0}, "policy": {"apology": 0.5}},
        examples=[{"prompt": "user: <script>alert(1)</script>", "reference": "ref",
                   "responses": {"sft": "a & b", "policy": "c"}, "rewards": {"sft": 0.1, "policy": 0.2}}],
        gate={"passed": False, "baseline": "sft", "reasons": ["win rate 0.4 < 0.55"], "candidate_version": "3"},
        images=imgs,
        notes=["a note"],
    )
    assert page.count('src="data:image/png;base64,') == 3
    assert base64.b64encode((tmp_path / "r.png").read_bytes()).decode() in page  # inlined, not linked
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert "FAILED" in page and "win rate 0.4 &lt; 0.55" in page and "v3" in page
    assert "<td>apology</td><td class=num>0</td><td class=num>0.5</td>" in page


# ----------------------------------------------------------------------------- provenance, folding, citations

LONG_REFERENCE = ("Paris is the capital and the largest city of France. " * 12).strip()
LONG_RESPONSE = "Sure! <b>Here</b> is a long answer & more. " + "It keeps going with detail after detail. " * 20
PROVENANCE = {
    "date": "2026-12-01T09:30:00+00:00", "eval_run_id": "e0a1b2c3d4", "parent_run_id": "p9f8e7d6c5",
    "tracking_uri": "http://127.0.0.1:5000", "git_commit": "1e8d6e4c0ffee0000000000000000000000000000",
    "recipe": {"profile": "default", "model.base": "embedded:smollm2-135m-instruct", "align.method": "dpo",
               "align.learning_rate": 0.0002, "align.dpo.loss_type": ["sigmoid", "sft"]},
    "dvc": {"digest": "3f2a9c1b7e45", "inputs": [
        {"path": "data/formatted", "md5": "6add2948173d6a3743d72f8a557a1e7e.dir", "stage": "format", "stage_hash": "a1b2c3d4e5f6"},
        {"path": "models/policy", "md5": "0f1e2d3c4b5a69788796a5b4c3d2e1f0.dir", "stage": "align", "stage_hash": "f6e5d4c3b2a1"},
    ]},
}


def sample_page(tmp_path, provenance=PROVENANCE) -> str:
    """A report as the eval stage renders it, with long texts and markup to escape (also what the
    README screenshot is made from: `sample_page(Path(...))`)."""
    rewards = {"base": [0.2, -0.4, 0.1, 0.0], "sft": [0.1, 0.3, -0.2, 0.4], "policy": [0.5, 0.6, 0.2, 0.3]}
    imgs = {
        "win rates": report.plot_winrates({"policy vs sft (judge)": 0.625, "policy vs sft (rm)": 0.4375},
                                          {"policy vs sft (judge)": (0.47, 0.78), "policy vs sft (rm)": (0.28, 0.59)},
                                          tmp_path / "w.png"),
        "reward distributions": report.plot_reward_distributions(rewards, tmp_path / "r.png"),
        "reward vs length": report.plot_reward_vs_length(
            {m: ([12, 30, 44, 20], rs) for m, rs in rewards.items()}, tmp_path / "l.png"),
    }
    return report.render_html(
        title="alignflow eval — candidate (dpo)",
        metrics={"gate_passed": 1, "winrate_judge_vs_sft": 0.625, "winrate_rm_vs_sft": 0.4375, "kl_vs_sft": 4.6,
                 "refusal_rate_harmful": 0.0, "overrefusal_rate_benign": math.nan},
        diagnostics={"sft": {"apology": 0.0, "mean length (words)": 31.0}, "policy": {"apology": 0.125, "mean length (words)": 35.5}},
        examples=[
            {"prompt": "user: What is the capital of France?", "reference": LONG_REFERENCE,
             "responses": {"base": "Paris.", "sft": "The capital of France is Paris.", "policy": LONG_RESPONSE},
             "rewards": {"base": 0.1, "sft": 0.3, "policy": 0.6}},
            {"prompt": "user: <script>alert(1)</script>", "reference": "No.",
             "responses": {"base": "a & b", "sft": "c", "policy": "d"}, "rewards": {"base": 0.0, "sft": 0.1, "policy": 0.2}},
        ],
        gate={"passed": True, "baseline": "sft", "candidate_version": "4",
              "reasons": ["win rate vs sft under the independent judge 0.625 >= 0.550",
                          "KL(candidate||SFT) 4.600 nats/response <= 25.000"],
              "eval_run_id": "e0a1b2c3d4", "parent_run_id": "p9f8e7d6c5"},
        images=imgs,
        provenance=provenance,
    )


def test_provenance_block_comes_first(tmp_path):
    page = sample_page(tmp_path)
    start = page.index("<h2>Provenance</h2>")
    assert start < page.index("<h2>Promotion gate</h2>") < page.index("<h2>Metrics</h2>")
    block = page[start:page.index("<h2>Promotion gate</h2>")]
    for text in ("2026-12-01T09:30:00+00:00", "<code>e0a1b2c3d4</code>", "<code>p9f8e7d6c5</code>",
                 "<code>1e8d6e4c0ffee0000000000000000000000000000</code>", "<code>align.method=dpo</code>",
                 "<code>model.base=embedded:smollm2-135m-instruct</code>",
                 '<code>align.dpo.loss_type=[&quot;sigmoid&quot;, &quot;sft&quot;]</code>',
                 "digest <code>3f2a9c1b7e45</code>", "<code>models/policy</code>",
                 "<code>0f1e2d3c4b5a69788796a5b4c3d2e1f0.dir</code>", "align <code>f6e5d4c3b2a1</code>"):
        assert text in block, text
    # What is not known says so instead of showing an empty cell.
    bare = report.render_html(title="t", metrics={}, diagnostics={}, examples=[], gate=None, images={},
                              provenance={"date": "2026-12-01T09:30:00+00:00"})
    assert bare.count("unknown (") == 5 and "the stage ran on its own" in bare


def test_long_texts_are_folded_and_escaped(tmp_path):
    page = sample_page(tmp_path)
    assert page.count("<details>") == 2  # the long reference and the long policy response; short cells stay open
    preview = page[page.index('<span class=preview>', page.index("Sure!") - 40):]
    preview = preview[len('<span class=preview>'):preview.index("</span>")]
    assert preview.startswith("Sure! &lt;b&gt;Here&lt;/b&gt; is a long answer &amp; more.") and preview.endswith("…")
    assert len(html.unescape(preview)) <= report.FOLD_CHARS + 1
    assert f"[show all {len(LONG_RESPONSE):,} characters]" in page
    assert html.escape(LONG_RESPONSE) in page and html.escape(LONG_REFERENCE) in page  # the whole text, once unfolded
    assert "<b>Here</b>" not in page and "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page


def test_cites_public_sources_only(tmp_path):
    page = sample_page(tmp_path)
    for private in ("seed " + "0", "ARCHITECTURE", "§", "seeds" + "/"):  # in pieces: tests/test_standalone.py
        assert private not in page, private
    refs = page[page.index("<h2>References</h2>"):]
    for public in ("Ouyang et al. 2022", "Training language models to follow instructions with human feedback",
                   "Scaling Laws for Reward Model Overoptimization", "arXiv:2210.10760", "Singhal et al. 2023",
                   "Askell et al. 2021", "Schulman 2020", "Efron &amp; Tibshirani 1993"):
        assert public in refs, public
    body = page[:page.index("<h2>References</h2>")]
    for short in report.REFERENCES:  # every listed source is cited in the text, and the other way round
        assert (html.escape(short) in body) == (html.escape(short) in refs), short
    assert "Zhou et al. 2023" not in page  # IFEval is cited only on a page with its section


def _dvc_project(root):
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  format: {cmd: x, deps: [data/clean], outs: [data/formatted]}\n"
        "  align: {cmd: x, deps: [data/formatted], outs: [models/policy]}\n"
        "  eval: {cmd: x, deps: [components/eval.py, data/formatted, models/policy], outs: [reports]}\n")
    lock = {"schema": "2.0", "stages": {
        "format": {"cmd": "x", "outs": [{"path": "data/formatted", "hash": "md5", "md5": "aaa.dir"}]},
        "align": {"cmd": "x", "outs": [{"path": "models/policy", "hash": "md5", "md5": "bbb.dir"}]},
    }}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return lock


def test_provenance_is_read_from_git_dvc_lock_and_params(tmp_path, monkeypatch):
    lock = _dvc_project(tmp_path)
    (tmp_path / "params.yaml").write_text("align:\n  method: ppo\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@mlflow.example:5000")
    monkeypatch.delenv("ALIGNFLOW_PARENT_RUN_ID", raising=False)

    prov = report.collect_provenance(root=tmp_path, gate={"eval_run_id": "e1", "parent_run_id": "p1"},
                                     now=datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc))
    assert prov["date"] == "2026-12-01T09:30:00+00:00" and prov["git_commit"] == head
    assert (prov["eval_run_id"], prov["parent_run_id"]) == ("e1", "p1")
    assert prov["recipe"]["align.method"] == "ppo" and "align.ppo.clip_range" in prov["recipe"]
    assert "s3cret" not in prov["tracking_uri"] and "mlflow.example:5000" in prov["tracking_uri"]
    hashes = tracking.dvc_stage_hashes(tmp_path / "dvc.lock")
    assert prov["dvc"]["inputs"] == [  # code deps are the commit's; data and models are dvc.lock's
        {"path": "data/formatted", "md5": "aaa.dir", "stage": "format", "stage_hash": hashes["format"]},
        {"path": "models/policy", "md5": "bbb.dir", "stage": "align", "stage_hash": hashes["align"]},
    ]
    digest = prov["dvc"]["digest"]
    assert report.eval_inputs(tmp_path / "dvc.lock", tmp_path / "dvc.yaml")["digest"] == digest  # stable
    lock["stages"]["align"]["outs"][0]["md5"] = "ccc.dir"  # another policy: another digest
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert report.eval_inputs(tmp_path / "dvc.lock", tmp_path / "dvc.yaml")["digest"] != digest


def test_provenance_without_git_dvc_or_params(tmp_path, monkeypatch):
    """A report rendered anywhere still renders: what cannot be read is None."""
    monkeypatch.setenv("ALIGNFLOW_PARENT_RUN_ID", "p-env")
    prov = report.collect_provenance(root=tmp_path)
    assert prov["parent_run_id"] == "p-env"
    assert prov["recipe"] is None and prov["git_commit"] is None and prov["dvc"] == {}
    (tmp_path / "dvc.lock").write_text("stages: [not, a, mapping")  # broken YAML
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert report.eval_inputs(tmp_path / "dvc.lock", tmp_path / "dvc.yaml") == {}


def test_provenance_reads_the_active_mlflow_run(tmp_path, monkeypatch):
    """Inside the eval stage, the run ids come from MLflow's active run (the stage's child run)."""
    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="eval-run"),
                                data=types.SimpleNamespace(tags={"mlflow.parentRunId": "parent-run"}))
    monkeypatch.setitem(sys.modules, "mlflow", types.SimpleNamespace(active_run=lambda: run))
    monkeypatch.delenv("ALIGNFLOW_PARENT_RUN_ID", raising=False)
    prov = report.collect_provenance(root=tmp_path)
    assert (prov["eval_run_id"], prov["parent_run_id"]) == ("eval-run", "parent-run")
    page = report.render_html(title="t", metrics={}, diagnostics={}, examples=[], gate=None, images={},
                              provenance=None)  # collected by render_html itself
    assert "<code>eval-run</code>" in page and "<code>parent-run</code>" in page


def test_ifeval_section_shows_accuracies_per_type_and_the_prompts_that_differ():
    from alignflow.verifiable import Verdict

    ids = ("punctuation:no_comma", "startend:quotation")
    verdicts = {"sft": [Verdict(ids, (False, True), (False, True)), Verdict(ids[:1], (True,), (True,))],
                "policy": [Verdict(ids, (True, True), (True, True)), Verdict(ids[:1], (True,), (True,))]}
    ifeval = {"accuracy": {"sft": {"strict": 0.5, "loose": 0.5, "instruction_strict": 2 / 3},
                           "policy": {"strict": 1.0, "loose": 1.0, "instruction_strict": 1.0}},
              "per_type": {"punctuation:no_comma": {"sft": (2, 0.5), "policy": (2, 1.0)},
                           "startend:quotation": {"sft": (1, 1.0), "policy": (1, 1.0)}},
              "verdicts": verdicts}
    section = report.ifeval_section(ifeval, ["Say hi. No commas. Quote it.", "Say bye. No commas."],
                                    {"sft": ['"hi, you"', "bye"], "policy": ['"hi you"', "bye"]}, n_examples=4)
    assert len(section["examples"]) == 1 and section["examples"][0]["followed"]["sft"] == [False, True]
    page = report.render_html(title="t", metrics={}, diagnostics={}, examples=[], gate=None, images={},
                              provenance={}, ifeval=section)
    assert "Verifiable instruction following (IFEval)" in page and "punctuation:no_comma" in page
    assert "<b>✗ ✓</b>" in page and "<b>✓ ✓</b>" in page  # per model, per constraint
    refs = page[page.index("<h2>References</h2>"):]
    assert "Zhou et al. 2023" in refs and "Instruction-Following Evaluation" in refs
