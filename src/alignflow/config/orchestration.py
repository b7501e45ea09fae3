"""Params of the Airflow DAG (dags/alignflow_retrain.py) and the stage containers.

Only names and shapes live here, never secret values: `secrets` lists Kubernetes Secret
objects (or, for Docker, environment variable names on the Airflow worker) whose contents
reach the stage containers at run time.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from alignflow import STAGES
from alignflow.config.base import Section

# Kubernetes quantity ("8Gi", "512Mi", "2G"); Docker takes the same strings here.
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CRON_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def quantity_bytes(quantity: str) -> int:
    """'8Gi' -> 8589934592 (what Docker's shm_size wants)."""
    match = re.match(r"^(\d+(?:\.\d+)?)([A-Za-z]*)$", quantity)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {quantity!r} (e.g. 512Mi, 8Gi)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


class DockerParams(Section):
    url: str = "unix://var/run/docker.sock"
    # Host directory holding the project checkout; mounted at /workspace in every container,
    # so dvc.lock, the DVC cache and Ray checkpoints survive between stage tasks and retries.
    workspace: str = "/srv/alignflow/workspace"
    network_mode: str | None = None  # e.g. the compose network, so MLflow/Ray resolve by name
    # Environment variables copied from the Airflow worker into the containers at run time
    # (S3/MinIO and MLflow credentials). Values are never in params or the serialized DAG.
    env_passthrough: list[str] = Field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN", "HF_TOKEN"]
    )

    @field_validator("env_passthrough")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        return names


class KubernetesParams(Section):
    namespace: str = "alignflow"
    service_account: str | None = None
    # A ReadWriteMany PVC with the project checkout, mounted at /workspace in every pod
    # (the same role as docker.workspace).
    workspace_pvc: str = "alignflow-workspace"
    gpu_resource: str = "nvidia.com/gpu"
    image_pull_secrets: list[str] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)  # added for training stages only
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    memory_limit: str | None = "32Gi"
    startup_timeout_s: int = Field(600, ge=30)  # pulling a CUDA image takes a while


class OrchestrationParams(Section):
    backend: Literal["local", "docker", "kubernetes"] = "local"
    dag_id: str = "alignflow_retrain"
    # Cron expression or preset (@daily, @weekly, ...); null = no time-based runs.
    schedule: str | None = "@weekly"
    # New data landing here (an asset event for this URI) triggers a run too; null = time only.
    raw_data_asset: str | None = "s3://alignflow/raw/"
    # The project checkout as the Airflow worker sees it: the local backend runs `dvc repro`
    # there; the end task reads its dvc.lock and metrics/ to tag the MLflow parent run.
    # null = the project the DAG file lives in.
    checkout: str | None = None
    # Only these stages (and the start/end tasks); must include their upstream stages.
    # null = every stage in dvc.yaml.
    stages: list[str] | None = None
    image: str = "ghcr.io/alignflow/alignflow-stage:0.1.0"
    # GPUs per training stage; stages not listed get none (and no GPU node selector).
    gpus: dict[str, int] = Field(default_factory=lambda: {"sft": 1, "reward": 1, "align": 1})
    # Memory-backed /dev/shm: PyTorch dataloaders and NCCL need more than Docker's 64 MB.
    shm_size: str = "8Gi"
    # kubernetes: names of Kubernetes Secrets whose keys become env vars in every pod.
    secrets: list[str] = Field(default_factory=lambda: ["alignflow-s3", "alignflow-mlflow"])
    # DVC remote URL (s3://bucket/path, or a local dir); null = no `dvc pull`/`dvc push`.
    dvc_remote: str | None = None
    dvc_endpoint_url: str | None = None  # S3-compatible store (MinIO): its endpoint, e.g. http://minio:9000
    # A retry re-runs `dvc repro --single-item`: finished stages are cached and training
    # stages resume from their Ray Train checkpoints in the workspace.
    retries: int = Field(2, ge=0)
    retry_delay_s: int = Field(300, ge=0)
    stage_timeout_h: float | None = Field(24.0, gt=0)
    docker: DockerParams = DockerParams()
    kubernetes: KubernetesParams = KubernetesParams()

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str] | None) -> list[str] | None:
        if stages is not None:
            unknown = sorted(set(stages) - set(STAGES))
            if unknown:
                raise ValueError(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
        return stages

    @field_validator("gpus")
    @classmethod
    def _gpu_stages(cls, gpus: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(gpus) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
        if any(n < 0 for n in gpus.values()):
            raise ValueError("GPU counts must be >= 0")
        return gpus

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and value not in _CRON_PRESETS and len(value.split()) != 5:
            raise ValueError(f"{value!r}: expected a 5-field cron expression or one of {', '.join(_CRON_PRESETS)}")
        return value

    @field_validator("shm_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"not a size: {value!r} (e.g. 512Mi, 8Gi)")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not _K8S_NAME.match(n)]
        if bad:
            raise ValueError(f"not Kubernetes object names (lowercase, digits, '-', '.'): {bad}")
        return names

    def gpu_count(self, stage: str) -> int:
        return self.gpus.get(stage, 0)

    def cross_check(self, params) -> list[str]:
        problems = []
        uri = params.tracking.tracking_uri
        if self.backend != "local" and uri and uri.startswith(("sqlite:", "file:")):
            problems.append(
                f"backend {self.backend}: tracking.tracking_uri {uri!r} is local to one machine; "
                "point it at the MLflow server (http://...)"
            )
        return problems
