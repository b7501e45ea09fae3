"""evaluate.run end to end on tiny models, tracked in a real MLflow server with its registry."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.evaluation.conftest import tiny_params, write_policy

pytestmark = pytest.mark.slow

CONTRACT_KEYS = (
    "winrate_rm_vs_sft", "winrate_judge_vs_sft", "rm_accuracy_heldout", "policy_implicit_accuracy", "kl_vs_sft",
    "refusal_rate_harmful", "overrefusal_rate_benign", "length_ratio_vs_sft", "distinct_2",
    "apology_rate_delta_vs_sft", "as_an_ai_rate_delta_vs_sft", "please_rate_delta_vs_sft", "gate_passed",
    "ifeval_strict_policy", "ifeval_strict_sft", "ifeval_strict_base", "ifeval_loose_policy", "ifeval_delta_vs_sft",
    "ifeval_delta_vs_sft_ci_low", "ifeval_delta_vs_sft_ci_high",
)


def test_eval_stage_scores_gates_and_promotes(eval_project, tracking_env, capsys):
    from alignflow.evaluation.evaluate import run
    from alignflow.stage import run_stage

    client = mlflow.MlflowClient()
    # Run 1: no champion yet -> compared with SFT; a permissive gate promotes the candidate.
    params = tiny_params(gate={"min_winrate": 0.0, "max_kl": 1e9, "max_safety_regression": 1.0})
    m1 = run_stage("eval", run, params)
    on_disk = json.loads((eval_project / "metrics/eval.json").read_text())
    for key in CONTRACT_KEYS:
        assert key in on_disk, key
    assert on_disk["gate_passed"] == 1 and on_disk["gate_vs_champion"] == 0
    # metrics/headline.json (dvc.yaml's DVC metrics, `dvc exp show`): eval.json's values, same names
    headline = json.loads((eval_project / "metrics/headline.json").read_text())
    assert headline == {k: on_disk[k] for k in headline}
    assert {"gate_passed", "winrate_judge_vs_sft", "winrate_judge_vs_sft_ci_low", "kl_vs_sft"} <= set(headline)
    assert 0.0 <= m1["winrate_judge_vs_sft"] <= 1.0 and m1["winrate_judge_vs_sft_n"] == 6
    assert m1["winrate_rm_vs_sft_ci_low"] <= m1["winrate_rm_vs_sft"] <= m1["winrate_rm_vs_sft_ci_high"]
    assert m1["kl_vs_sft"] > 0  # the policy's adapter changes the model; k3 is > 0 unless identical
    assert m1["rm_accuracy_heldout"] in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # 4 pairs, ties ½
    assert m1["rm_accuracy_heldout_n"] == 4
    assert m1["rm_accuracy_heldout_ci_low"] <= m1["rm_accuracy_heldout"] <= m1["rm_accuracy_heldout_ci_high"]
    assert "winrate_rm_vs_base" in m1 and "winrate_rm_vs_champion" not in m1
    v1 = str(m1["candidate_version"])
    assert client.get_model_version_by_alias("alignflow-policy", "candidate").version == v1
    gate1 = json.loads((eval_project / "reports/gate.json").read_text())
    assert gate1["promotable"] and gate1["candidate_version"] == v1 and gate1["eval_run_id"]
    assert "promotion gate PASSED" in capsys.readouterr().out
    # Eval never moves champion itself (alignflow promote does, once DVC committed eval:
    # test_promote.py); here, outside DVC, promote by hand as `alignflow promote` would.
    client.set_registered_model_alias("alignflow-policy", "champion", v1)

    # `alignflow chat --model champion` loads the promoted version from the registry.
    proc = subprocess.run([str(Path(sys.executable).parent / "alignflow"), "chat", "--model", "champion",
                           "--max-new-tokens", "4"], input="hello\n/exit\n", capture_output=True, text=True,
                          timeout=300, cwd=eval_project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("assistant> ") == 1 and f"alignflow-policy-v{v1}" in proc.stderr

    html = (eval_project / "reports/eval.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Example generations" in html
    assert (eval_project / "plots/eval_winrates.csv").read_text().startswith("comparison,winrate\n")
    assert (eval_project / "plots/eval_rewards.csv").read_text().startswith("model,length,reward\n")
    gens = [json.loads(x) for x in (eval_project / "reports/generations.jsonl").read_text().splitlines()]
    assert {g["split"] for g in gens} == {"benign", "harmful", "ifeval"} and set(gens[0]["responses"]) == {"base", "sft", "policy"}
    assert set(gens[0]["judge_scores"]) == set(gens[0]["finished"]) == {"base", "sft", "policy"}
    # IFEval: the stored verdicts are the checkers' verdicts on the stored responses
    from alignflow.verifiable import verify

    constrained = [g for g in gens if g["split"] == "ifeval"]
    assert m1["n_ifeval_prompts"] == len(constrained) == 3
    for g in constrained:
        for model, text in g["responses"].items():
            assert g["followed"][model] == list(verify(text, g["constraints"]).strict)
    strict = sum(all(g["followed"]["policy"]) for g in constrained) / 3
    assert m1["ifeval_strict_policy"] == pytest.approx(strict)
    assert m1["ifeval_delta_vs_sft_ci_low"] <= m1["ifeval_delta_vs_sft"] <= m1["ifeval_delta_vs_sft_ci_high"]
    assert "Verifiable instruction following (IFEval)" in html and "punctuation:no_comma" in html

    # Run 2: a new policy; the champion (v1) is downloaded from the registry and compared, and a
    # strict KL limit fails the gate: not an error, the champion stays, the reasons are recorded.
    write_policy(eval_project, seed=3)
    params = tiny_params(include_base=False, gate={"min_winrate": 0.0, "max_kl": 0.0, "kl_estimator": "k3"})
    m2 = run_stage("eval", run, params)
    v2 = str(m2["candidate_version"])
    assert v2 != v1 and m2["champion_version"] == int(v1)
    assert m2["gate_passed"] == 0 and m2["gate_vs_champion"] == 1
    for key in ("winrate_rm_vs_champion", "winrate_judge_vs_champion", "refusal_rate_harmful_champion"):
        assert key in m2, key
    assert client.get_model_version_by_alias("alignflow-policy", "champion").version == v1
    assert client.get_model_version_by_alias("alignflow-policy", "candidate").version == v2
    gate = json.loads((eval_project / "reports/gate.json").read_text())
    assert gate["passed"] is False and gate["baseline"] == "champion" and gate["champion_at_eval"] == v1
    assert any(r.startswith("KL(candidate||SFT)") and "> 0.000" in r for r in gate["reasons"])
    assert "promotion gate FAILED" in capsys.readouterr().out

    # The eval run carries the decision; the parent-less run still has the artifacts.
    run_ = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id],
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run_.data.tags["gate.passed"] == "False" and run_.data.metrics["gate_passed"] == 0
    files = {f.path for f in client.list_artifacts(run_.info.run_id, "eval")}
    assert {"eval/eval.html", "eval/gate.json", "eval/figures"} <= files

    # Re-evaluating the same policy reuses its registered version (content digest), no new version.
    # eval.seeds: every prompt answered once per seed; win rates and CIs count prompts, not draws.
    m3 = run_stage("eval", run, tiny_params(include_base=False, compare_champion=False, max_prompts=2,
                                            max_harmful_prompts=0, max_pairs=0, seeds=[1, 2]))
    assert str(m3["candidate_version"]) == v2
    assert "refusal_rate_harmful" not in m3  # no harmful prompts: no rate, the safety check is skipped
    assert m3["n_eval_seeds"] == 2 and m3["n_prompts"] == 2 and m3["winrate_judge_vs_sft_n"] == 2
    assert m3["winrate_judge_vs_sft_seed_std"] >= 0 and "ifeval_delta_vs_sft_seed_std" in m3
    rows = [json.loads(x) for x in (eval_project / "reports/generations.jsonl").read_text().splitlines()]
    benign = [(r["prompt_id"], r["seed"]) for r in rows if r["split"] == "benign"]
    assert len(benign) == 4 and {s for _, s in benign} == {1, 2} and len({p for p, _ in benign}) == 2


def test_missing_inputs_are_clear_errors(tmp_path, monkeypatch):
    from alignflow.evaluation.evaluate import run
    from alignflow.io import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="prompts_test.jsonl: missing"):
        run(tiny_params(), tracker=None)


def test_bad_prompt_record_names_file_and_line(tmp_path):
    from alignflow.evaluation.evaluate import load_prompts
    from alignflow.io import InputError

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": [{"role": "user", "content": "hi"}]}\n{"prompt": "not messages"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:2: 'prompt' must be"):
        load_prompts(p, 10)
    assert len(load_prompts(p, 1)) == 1


def test_best_of_n_policy_picks_the_reward_models_favourite(eval_project):
    """kind best_of_n: n samples from its policy, the reward model's argmax is the answer."""
    from alignflow.evaluation.evaluate import BestOfN, reward_scores
    from alignflow.rlhf import generation

    params = tiny_params(max_new_tokens=6)
    pdir = eval_project / "models/bon"
    pdir.mkdir()
    (pdir / "alignflow_model.json").write_text(json.dumps(
        {"kind": "best_of_n", "policy": "models/sft", "reward": "models/reward", "n": 3, "temperature": 0.8}))
    bon = BestOfN(pdir, params)
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi."}]]
    out = bon.generate("policy", prompts[:1], prompts[1:], params.eval, seeds=7)
    pol = bon.policy
    assert out.backend == pol.generator.name == generation.choose_backend(params.eval.backend, param="eval.backend")
    # the same engine, prompts and seed draw the same candidates (the seed covers the whole call)
    details = pol.generator.generate_with_details(prompts, n=3, max_new_tokens=6, temperature=0.8, top_p=pol.top_p,
                                                  seed=7, batch_size=params.eval.batch_size, progress=False)
    samples = [[g.text for g in gens] for gens in details]
    for prompt, cands, chosen in zip(prompts, samples, [out.responses[0], out.harmful[0]]):
        scores = reward_scores(pol.reward_model, pol.reward_tokenizer, [prompt] * 3, cands, params.eval)
        assert chosen == cands[max(range(3), key=scores.__getitem__)]
