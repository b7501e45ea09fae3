"""sft then reward on tiny data, tracked by a real MLflow server: outputs, runs, metrics, registry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alignflow.config import ParamsError, validate

from .conftest import smoke_params


@pytest.mark.slow
def test_sft_then_reward_outputs_and_mlflow(project, tracking_env):
    import mlflow
    import torch

    from alignflow.models import load_causal_lm, load_reward_model
    from alignflow.stage import run_stage
    from alignflow.training import reward, sft

    _, params = project({"sft.max_steps": 3, "sft.eval_steps": 3, "sft.save_steps": 3, "reward.backbone": "lm",
                         "reward.max_steps": 3, "reward.eval_steps": 3, "reward.save_steps": 3})
    sft_metrics = run_stage("sft", sft.run, params)
    reward_metrics = run_stage("reward", reward.run, params)

    # --- sft outputs
    saved = json.loads(Path("metrics/sft.json").read_text())
    assert saved["steps"] == 3 and saved["tokens_per_s"] > 0 and saved["eval_perplexity"] > 1
    assert saved["train_loss"] > 0 and saved["eval_loss"] > 0
    rows = list(csv.DictReader(open("plots/sft_loss.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and all(r["train_loss"] for r in rows)
    assert list(csv.DictReader(open("plots/sft_eval.csv"))) == [{"step": "3", "eval_loss": f"{saved['eval_loss']:.6g}"}]
    meta = json.loads(Path("models/sft/alignflow_model.json").read_text())
    assert meta == {**meta, "kind": "causal_lm", "adapter": True, "base": "tiny:llama", "loss_on": "assistant"}
    policy, tok = load_causal_lm("models/sft", device="cpu")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    # --- reward outputs: a reward head on the SFT model, reloadable with the same scores
    saved = json.loads(Path("metrics/reward.json").read_text())
    assert 0.0 <= saved["eval_accuracy"] <= 1.0 and "eval_mean_margin" in saved and saved["eval_pairs"] == 6
    meta = json.loads(Path("models/reward/alignflow_model.json").read_text())
    assert meta["kind"] == "reward" and meta["base"] == "models/sft" and meta["base_digest"]
    rm, rtok = load_reward_model("models/reward", device="cpu")
    batch = rtok.apply_chat_template([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        first = rm(**batch).logits
        again = load_reward_model("models/reward", device="cpu")[0](**batch).logits
    assert first.shape == (1, 1) and torch.equal(first, again)
    assert [r["step"] for r in csv.DictReader(open("plots/reward_loss.csv"))] == ["1", "2", "3"]
    evals = list(csv.DictReader(open("plots/reward_eval.csv")))
    assert [r["step"] for r in evals] == ["3"] and evals[0]["eval_loss"] and evals[0]["eval_accuracy"]
    assert float(evals[0]["elapsed_s"]) > 0  # seconds into training: accuracy against training time

    # --- MLflow: child runs with params, per-step curves, logged + registered models
    client = mlflow.MlflowClient(tracking_env)
    for stage, registered, metrics in (("sft", "alignflow-sft", sft_metrics), ("reward", "alignflow-reward", reward_metrics)):
        exp = client.get_experiment_by_name(params.tracking.experiment)
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`alignflow.stage` = '{stage}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.params[f"{stage}.max_steps"] == "3"
        curve = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in curve) == [1, 2, 3], (stage, [(m.step, m.value, m.timestamp) for m in curve])
        assert run.data.metrics["steps"] == 3
        assert f"alignflow.{stage}.model_uri" in run.data.tags
        version = client.get_model_version_by_alias(registered, "candidate")
        assert version.run_id == run.info.run_id
        assert int(version.version) == metrics["registered_version"]
        assert version.tags["adapter"] == "True"
    # The SFT adapter was logged with mlflow.transformers, its base recorded as a local path.
    sft_run = client.get_model_version_by_alias("alignflow-sft", "candidate").run_id
    logged = mlflow.models.get_model_info(f"runs:/{sft_run}/model")
    assert "transformers" in logged.flavors
    assert logged.metadata["alignflow_base"] == "tiny:llama"


def test_params_that_cannot_work_together_fail_validation():
    with pytest.raises(ValueError, match="sft.peft: qlora needs a GPU"):
        validate(smoke_params({"sft.peft": "qlora"}))
    with pytest.raises(ValueError, match="reward.peft: qlora needs a GPU"):
        validate(smoke_params({"reward.peft": "qlora", "reward.base": "tiny:llama", "reward.backbone": "lm"}))
    with pytest.raises(ValueError, match=r"sft.max_length: 4096 is above the context of tiny:llama \(1024 tokens\)"):
        validate(smoke_params({"sft.max_length": 4096}))
    with pytest.raises(ValueError, match="sft.packing: on a GPU packing needs flash attention"):
        validate(smoke_params({"sft.packing": True, "ray.use_gpu": True}))
    validate(smoke_params({"sft.packing": True, "ray.use_gpu": True, "model.attn_implementation": "flash_attention_2"}))
    validate(smoke_params({"sft.packing": True}))  # CPU: sdpa handles packed sequences


def test_load_params_reports_the_cross_check_with_the_file(tmp_path):
    import yaml

    from alignflow.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(smoke_params({"sft.peft": "qlora"})))
    with pytest.raises(ParamsError, match="qlora needs a GPU"):
        load_params(path)


def test_missing_data_names_the_file_and_the_stage_to_run(project):
    from alignflow.io import InputError
    from alignflow.training import reward, sft

    root, params = project()
    (root / "data/formatted/sft_train.jsonl").unlink()
    with pytest.raises(InputError, match=r"sft_train.jsonl: missing .*format stage"):
        sft.run(params, None)
    (root / "data/formatted/prefs_train.jsonl").write_text('{"prompt": [], "chosen": []}\n')
    with pytest.raises(InputError, match=r"prefs_train.jsonl:1: .*without 'rejected'|prefs_train.jsonl:1"):
        reward.train_loop({**reward.loop_config(params), "_alignflow_run_dir": str(root / "scratch")})


@pytest.mark.slow
def test_full_finetune_with_packing_saves_plain_weights(project):
    from transformers import AutoModelForCausalLM

    from alignflow.models import load_causal_lm
    from alignflow.training import sft

    _, params = project({"sft.peft": "none", "sft.packing": True, "sft.max_steps": 2, "sft.save_steps": 2,
                         "sft.eval_steps": 2, "sft.learning_rate": 1e-3, "tracking.log_models": False})
    metrics = sft.run(params, None)
    assert metrics["steps"] == 2 and metrics["eval_loss"] > 0
    meta = json.loads(Path("models/sft/alignflow_model.json").read_text())
    assert meta["adapter"] is False and meta["packing"] is True and meta["peft"] == "none"
    assert Path("models/sft/model.safetensors").exists()
    model, _ = load_causal_lm("models/sft", device="cpu")
    assert isinstance(model, AutoModelForCausalLM._model_mapping[type(model.config)])
    base, _ = load_causal_lm("tiny:llama", device="cpu")
    changed = [n for (n, a), (_, b) in zip(model.state_dict().items(), base.state_dict().items()) if not a.equal(b)]
    assert changed  # the full weights were trained, not an adapter


def test_curves_never_have_an_empty_cell_to_draw(tmp_path):
    """Train and eval series are logged at different steps: each goes to its own plot CSV (an
    empty cell would be drawn as 0 by `dvc plots`); required=() keeps a wide table for people."""
    from alignflow.training import common

    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7, "eval_accuracy": 0.5},
               {"step": 3, "loss": 1.25, "eval_accuracy": None}, {"step": 4, "eval_loss": 1.6}]
    assert common.write_curve(tmp_path / "train.csv", history, {"train_loss": "loss"}) == 3
    evals = {"eval_loss": "eval_loss", "eval_accuracy": "eval_accuracy"}
    assert common.write_curve(tmp_path / "eval.csv", history, evals) == 1
    read = lambda name: list(csv.reader(open(tmp_path / name)))  # noqa: E731
    assert read("train.csv") == [["step", "train_loss"], ["1", "2"], ["2", "1.5"], ["3", "1.25"]]
    assert read("eval.csv") == [["step", "eval_loss", "eval_accuracy"], ["2", "1.7", "0.5"]]
    common.write_curve(tmp_path / "wide.csv", history, {"train_loss": "loss", "eval_loss": "eval_loss"}, required=())
    assert read("wide.csv")[1:] == [["1", "2", ""], ["2", "1.5", "1.7"], ["3", "1.25", ""], ["4", "", "1.6"]]


def test_an_empty_validation_split_means_no_eval(tmp_path):
    """Few judged pairs can leave rank's val split empty: train without eval, do not fail."""
    from alignflow.training.reward import PREFS, preference_files

    (tmp_path / PREFS).mkdir(parents=True)
    (tmp_path / PREFS / "train.jsonl").write_text('{"id": "a"}\n')
    (tmp_path / PREFS / "val.jsonl").write_text("")
    assert preference_files(tmp_path) == (tmp_path / PREFS / "train.jsonl", None)
