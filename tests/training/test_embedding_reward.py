"""reward.backbone: embedding — the Bradley–Terry fit by hand, and the stage on tiny pairs with a
real MLflow server: a reward model every consumer (eval, judges, PPO/GRPO) scores with."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from alignflow.training import embedding_reward as ER


def test_bt_loss_and_fit_by_hand():
    import torch

    diff = np.array([[1.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    # w = 0: every pair is a coin flip, loss log 2
    assert float(ER.bt_loss(torch.zeros(2, dtype=torch.float64), torch.as_tensor(diff), torch.zeros(3), 0.0)) == \
        pytest.approx(math.log(2))
    rounds = []
    w = ER.fit_bradley_terry(diff, l2=0.1, on_round=lambda i, w, loss: rounds.append(loss))
    assert w[0] > 0 and w[1] == 0  # the chosen side is the larger first feature; the second carries nothing
    assert rounds[-1] < math.log(2) and rounds == sorted(rounds, reverse=True)
    # the stationary point of the convex loss: mean(-σ(-d·w)·d) + l2·w = 0
    d = diff[:, 0]
    grad = -np.mean(d / (1 + np.exp(d * w[0]))) + 0.1 * w[0]
    assert abs(grad) < 1e-5
    assert ER.fit_bradley_terry(diff, l2=1e6)[0] == pytest.approx(0.0, abs=1e-5)  # all penalty: w -> 0
    # a margin asks for a larger gap: the weights grow to make it (reward.embedding.use_margin)
    assert ER.fit_bradley_terry(diff, margin=np.ones(3), l2=0.1)[0] > w[0]
    assert ER.accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])) == 0.5  # win, tie, loss


def test_accuracy_is_split_by_the_pairs_origin():
    from alignflow.rlhf.rank import pair_source

    origins = [pair_source(r) for r in ({"source": "judge:verifier"}, {"source": "hh_rlhf_harmless_800"}, {},
                                           {"source": "judge:reference"})]
    assert origins == ["judge", "human", "human", "judge"]
    chosen, rejected = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])
    assert ER.accuracy_by_origin(chosen, rejected, origins) == {"eval_accuracy_human": 0.5, "eval_accuracy_judge": 0.5}
    # the same overall 0.5, from a reward model that ranks only the human pairs right:
    assert ER.accuracy_by_origin(chosen, rejected, ["human", "human", "judge", "judge"]) == \
        {"eval_accuracy_human": 1.0, "eval_accuracy_judge": 0.0}


@pytest.mark.slow
def test_embedding_reward_stage_scores_like_any_reward_model(project, tracking_env):
    import mlflow

    from alignflow.models import load_reward_model
    from alignflow.rlhf.judges import RewardModelJudge, score_with_reward_model
    from alignflow.stage import run_stage
    from alignflow.training import reward

    _, params = project({"reward.backbone": "embedding", "reward.embedding.max_seq_length": 32})
    metrics = run_stage("reward", reward.run, params)
    saved = json.loads(Path("metrics/reward.json").read_text())
    assert saved["train_pairs"] == 16 and saved["eval_pairs"] == 6 and saved["eval_accuracy"] == 1.0
    assert sum(v for k, v in saved.items() if k.startswith("eval_pairs_")) == 6 and saved["backbone"] == "embedding"
    meta = json.loads(Path("models/reward/alignflow_model.json").read_text())
    assert meta["kind"] == "reward" and meta["backbone"] == "embedding" and meta["encoder"] is None
    rm, tok = load_reward_model("models/reward")
    assert tok is None
    prompt = [{"role": "user", "content": "Is 7 an even number?"}]
    good, bad = score_with_reward_model(rm, tok, [prompt] * 2, ["No, it is odd.", "I cannot help with that, sorry."])
    assert good > bad
    assert RewardModelJudge("models/reward").score(prompt, ["No, it is odd.", "I cannot help with that, sorry."]) == \
        pytest.approx([good, bad], abs=1e-5)  # rank's reward_model judge: the same scores from a reload
    evals = list(csv.DictReader(open("plots/reward_eval.csv")))
    assert [r["step"] for r in evals] == [str(i) for i in range(1, 11)] and evals[-1]["eval_accuracy"] == "1"
    assert 0 < float(evals[0]["elapsed_s"]) <= float(evals[-1]["elapsed_s"]) and float(evals[-1]["eval_loss"]) < 0.7
    client = mlflow.MlflowClient(tracking_env)
    version = client.get_model_version_by_alias("alignflow-reward", "candidate")
    assert int(version.version) == metrics["registered_version"] and version.tags["base"] == "embedding"
