"""The orchestration section of params.yaml: defaults and clear errors."""

from __future__ import annotations

import pytest

from alignflow.config import ParamsError, load_params, validate
from alignflow.config.orchestration import quantity_bytes
from tests.conftest import ROOT


def test_project_params_and_smoke_profile():
    orch = load_params(ROOT / "params.yaml").orchestration
    assert orch.backend == "local" and orch.schedule == "@weekly"
    assert {s for s, n in orch.gpus.items() if n} == {"sft", "reward", "align"}
    assert orch.gpu_count("sft") == 1 and orch.gpu_count("clean") == 0


@pytest.mark.parametrize("section, message", [
    ({"backend": "slurm"}, "orchestration.backend"),
    ({"schedule": "every monday"}, "5-field cron"),
    ({"gpus": {"sft": 1, "pretrain": 8}}, "unknown stages \\['pretrain'\\]"),
    ({"stages": ["collect", "dedup"]}, "unknown stages \\['dedup'\\]"),
    ({"shm_size": "lots"}, "not a size"),
    ({"secrets": ["AWS_KEYS"]}, "not Kubernetes object names"),
    ({"docker": {"env_passthrough": ["AWS KEY"]}}, "not environment variable names"),
    ({"retries": -1}, "orchestration.retries"),
    ({"kubernetes": {"namespace": "x", "token": "abc"}}, "unknown key"),
])
def test_bad_orchestration_params(section, message):
    with pytest.raises(ParamsError, match=message):
        validate({"orchestration": section})


def test_containers_need_a_shared_tracking_server():
    with pytest.raises(ParamsError, match="backend kubernetes: tracking.tracking_uri 'sqlite:///mlflow.db'"):
        validate({"orchestration": {"backend": "kubernetes"}, "tracking": {"tracking_uri": "sqlite:///mlflow.db"}})
    validate({"orchestration": {"backend": "kubernetes"}, "tracking": {"tracking_uri": "http://mlflow:5000"}})


def test_quantity_bytes():
    assert quantity_bytes("8Gi") == 8 * 2**30
    assert quantity_bytes("512M") == 512 * 10**6
    with pytest.raises(ValueError, match="not a size"):
        quantity_bytes("8 GB")
