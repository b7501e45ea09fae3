"""Report rendering: DVC plot CSVs, PNGs, and the self-contained HTML."""

import base64
import csv
import math

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
