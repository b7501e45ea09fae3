"""The policy registry from eval's side: versions the align stage registered (mlflow.transformers),
reusing them as `candidate`, and loading them back as champion."""

from pathlib import Path

import pytest

from tests.evaluation.conftest import tiny_params

pytestmark = pytest.mark.slow


def test_align_registered_version_is_reused_and_loads_back(eval_project, tracking_env, monkeypatch):
    import mlflow
    import torch

    from alignflow import tracking
    from alignflow.evaluation import registry
    from alignflow.models import load_causal_lm, read_meta
    from alignflow.training import common

    params = tiny_params()
    parent = tracking.start_pipeline_run(params, name="registry-test")
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    with tracking.stage_run(params, "align") as align_run:  # what the align stage does
        info = common.log_and_register(params, align_run, Path("models/policy"), "align", task="text-generation")
    version = str(info["registered_version"])

    with tracking.stage_run(params, "eval") as eval_run:
        assert registry.ensure_candidate(Path("models/policy"), eval_run) == version  # same pipeline: reused
    client = mlflow.MlflowClient()
    assert client.get_model_version("alignflow-policy", version).tags[registry.DIGEST_TAG] == \
        registry.policy_digest("models/policy")

    # Loaded back from the registry, it is the same model as models/policy.
    model_dir = registry.resolve_model_ref(f"models:/alignflow-policy/{version}")
    assert read_meta(model_dir)["kind"] == "causal_lm"
    if "model_logged_as" not in info:  # logged with mlflow.transformers: rebuilt from MLmodel + peft/
        assert read_meta(model_dir)["registered_from"] == "mlflow.transformers"
    registered, tok = load_causal_lm(str(model_dir))
    local, _ = load_causal_lm("models/policy")
    ids = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(registered(ids).logits, local(ids).logits, atol=1e-5)

    # A different policy dir is not that version: eval registers it anew.
    (Path("models/policy") / "extra.json").write_text("{}")
    with tracking.stage_run(params, "eval") as eval_run:
        monkeypatch.delenv(tracking.PARENT_ENV)
        eval_run.parent_id = None
        assert registry.ensure_candidate(Path("models/policy"), eval_run) != version
