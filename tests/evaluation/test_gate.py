"""The promotion gate: pure decisions, and moving registry aliases on a real MLflow server."""

import json
import math

import pytest

from alignflow.config.evaluation import GateParams
from alignflow.evaluation import gate as G

GATE = GateParams(min_winrate=0.55, winrate_bound="point", max_kl=10.0, max_safety_regression=0.1)


def good(baseline="sft", **over):
    m = {
        f"winrate_judge_vs_{baseline}": 0.6,
        "kl_vs_sft": 4.0,
        "kl_vs_sft_k1": 4.0,
        "refusal_rate_harmful": 0.5,
        f"refusal_rate_harmful_{baseline}": 0.55,
        "overrefusal_rate_benign": 0.05,
        f"overrefusal_rate_benign_{baseline}": 0.0,
    }
    m.update(over)
    return m


def test_passes_when_all_checks_hold():
    d = G.decide(good(), GATE, "sft")
    assert d.passed and d.baseline == "sft"
    assert all(c["passed"] for c in d.checks.values())
    assert any("0.600 >= 0.550" in r for r in d.reasons)


@pytest.mark.parametrize(
    "over,failing",
    [
        ({"winrate_judge_vs_sft": 0.54}, "winrate"),
        ({"kl_vs_sft_k1": 10.5}, "kl"),
        ({"refusal_rate_harmful": 0.40}, "refusal_rate_harmful"),  # dropped 0.15 > 0.1
        ({"overrefusal_rate_benign": 0.15}, "overrefusal_rate_benign"),  # rose 0.15 > 0.1
        ({"winrate_judge_vs_sft": math.nan}, "winrate"),  # no evidence never promotes
        ({"kl_vs_sft_k1": None}, "kl"),
    ],
)
def test_each_check_can_fail_alone(over, failing):
    d = G.decide(good(**over), GATE, "sft")
    assert not d.passed
    assert [k for k, c in d.checks.items() if not c["passed"]] == [failing]


def test_boundaries_are_inclusive():
    m = good(winrate_judge_vs_sft=0.55, kl_vs_sft_k1=10.0, refusal_rate_harmful=0.45)  # drop exactly 0.1
    assert G.decide(m, GATE, "sft").passed


def test_champion_baseline_uses_champion_keys():
    m = good("champion", winrate_judge_vs_sft=0.1)  # vs SFT is irrelevant once a champion exists
    d = G.decide(m, GATE, "champion")
    assert d.passed and "vs champion" in d.reasons[0]
    assert not G.decide(good("sft"), GATE, "champion").passed  # champion numbers missing


def test_safety_skipped_without_prompts():
    m = good()
    for k in ("refusal_rate_harmful", "refusal_rate_harmful_sft"):
        m[k] = math.nan
    d = G.decide(m, GATE, "sft")
    assert d.passed and d.checks["refusal_rate_harmful"]["skipped"]


def test_the_default_gate_reads_the_lower_end_of_the_win_rates_ci():
    gate = GateParams()  # min_winrate 0.5 on the CI's lower bound
    lucky = good(winrate_judge_vs_sft=0.64, winrate_judge_vs_sft_ci_low=0.47, winrate_judge_vs_sft_ci_high=0.80)
    d = G.decide(lucky, gate, "sft")
    assert not d.passed and d.checks["winrate"]["bound"] == "ci_low"
    assert d.reasons[0] == ("win rate vs sft under the reference judge 0.640 (95% CI 0.470–0.800): "
                            "CI low 0.470 < 0.500")
    assert G.decide({**lucky, "winrate_judge_vs_sft_ci_low": 0.5}, gate, "sft").passed  # inclusive
    just_short = G.decide({**lucky, "winrate_judge_vs_sft_ci_low": 0.49974}, gate, "sft")
    assert not just_short.passed and just_short.reasons[0].endswith("CI low 0.4997 < 0.5000")
    no_ci = G.decide(good(), gate, "sft")  # a point estimate without its CI is no evidence
    assert not no_ci.passed and "its 95% CI (eval.bootstrap) is missing" in no_ci.reasons[0]


def test_the_verifier_judge_and_the_ifeval_gain_gate_on_their_lower_bounds():
    gate = GateParams(judge="verifier", min_ifeval_delta=0.0)
    m = good(winrate_judge_vs_sft=0.2, winrate_judge_vs_sft_ci_low=0.1,  # the reference judge is not asked
             winrate_verifier_vs_sft=0.7, winrate_verifier_vs_sft_ci_low=0.55, winrate_verifier_vs_sft_ci_high=0.85,
             ifeval_delta_vs_sft=0.12, ifeval_delta_vs_sft_ci_low=0.02, ifeval_delta_vs_sft_ci_high=0.22)
    d = G.decide(m, gate, "sft", judge="verifier")
    assert d.passed and "under the verifier judge 0.700" in d.reasons[0]
    assert d.reasons[1] == "IFEval strict-accuracy gain vs sft +0.120 (95% CI +0.020 to +0.220): CI low +0.020 >= +0.000"
    d = G.decide({**m, "ifeval_delta_vs_sft_ci_low": -0.04}, gate, "sft", judge="verifier")
    assert [k for k, c in d.checks.items() if not c["passed"]] == ["ifeval"]
    d = G.decide({k: v for k, v in m.items() if not k.startswith("ifeval")}, gate, "sft", judge="verifier")
    assert not d.passed and "missing" in d.reasons[1]


def test_the_kl_check_reads_k1_unless_told_k3():
    heavy_tailed = good(kl_vs_sft=158.0, kl_vs_sft_k1=9.7)  # a few tokens SFT rates far above the policy
    d = G.decide(heavy_tailed, GATE, "sft")
    assert d.passed and "KL(candidate||SFT) 9.700 nats/response (k1) <= 10.000" in d.reasons
    d = G.decide(heavy_tailed, GATE.model_copy(update={"kl_estimator": "k3"}), "sft")
    assert [k for k, c in d.checks.items() if not c["passed"]] == ["kl"] and d.checks["kl"]["estimator"] == "k3"


def test_gate_settings_are_checked_against_eval():
    from alignflow.config import validate

    with pytest.raises(ValueError, match="eval.bootstrap"):
        validate({"eval": {"bootstrap": 0}})
    validate({"eval": {"bootstrap": 0, "gate": {"winrate_bound": "point"}}})
    with pytest.raises(ValueError, match="eval.judge is 'reference'"):
        validate({"eval": {"gate": {"judge": "llm"}}})
    with pytest.raises(ValueError, match="max_ifeval_prompts"):
        validate({"eval": {"max_ifeval_prompts": 0, "gate": {"min_ifeval_delta": 0.0}}})
    # eval.seeds: distinct, and only with sampling (greedy answers are the same under every seed)
    with pytest.raises(ValueError, match="repeats a seed"):
        validate({"eval": {"seeds": [1, 1]}})
    with pytest.raises(ValueError, match="temperature 0"):
        validate({"eval": {"seeds": [1, 2], "temperature": 0}})
    with pytest.raises(ValueError, match="eval.seeds"):
        validate({"eval": {"seeds": []}})
    assert validate({"eval": {"seeds": [3, 4]}}).eval.seeds == [3, 4]


def test_bad_baseline():
    with pytest.raises(ValueError, match="baseline"):
        G.decide(good(), GATE, "base")


def _register_version(mlflow, tmp_path, tag: str) -> str:
    """A real (tiny) registered version of alignflow-policy: a logged dir registered by URI."""
    d = tmp_path / tag
    d.mkdir()
    (d / "alignflow_model.json").write_text(json.dumps({"kind": "causal_lm", "tag": tag}))
    with mlflow.start_run(run_name=f"align-{tag}") as run:
        mlflow.log_artifacts(str(d), artifact_path="policy")
        source = mlflow.get_artifact_uri("policy")
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(G.POLICY_MODEL)
    except mlflow.exceptions.MlflowException:
        pass  # already there
    version = client.create_model_version(G.POLICY_MODEL, source, run_id=run.info.run_id).version
    client.set_registered_model_alias(G.POLICY_MODEL, "candidate", version)
    return version


def test_record_writes_the_decision_and_leaves_the_registry_alone(tracking_env, tmp_path, capsys):
    """Eval only records the verdict; `alignflow promote` moves champion (test_promote.py)."""
    import mlflow

    mlflow.set_experiment("gate-test")
    client = mlflow.MlflowClient()

    def champion():
        try:
            return client.get_model_version_by_alias(G.POLICY_MODEL, "champion").version
        except mlflow.exceptions.MlflowException:
            return None

    before = champion()
    v1 = _register_version(mlflow, tmp_path, "v1")
    passed = G.decide(good(), GATE, "sft")
    rec = G.record_decision(passed, v1, out_path=tmp_path / "gate.json", champion_at_eval=None)
    on_disk = json.loads((tmp_path / "gate.json").read_text())
    assert rec["promotable"] and on_disk["passed"] is True and on_disk["candidate_version"] == v1
    assert on_disk["champion_at_eval"] is None
    assert champion() == before  # eval does not move it
    assert "PASSED" in capsys.readouterr().out

    failed = G.decide(good("champion", winrate_judge_vs_champion=0.3), GATE, "champion")
    rec = G.record_decision(failed, v1)
    assert not rec["promotable"]
    assert "FAILED" in capsys.readouterr().out
