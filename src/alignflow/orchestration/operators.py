"""One Airflow operator per DVC stage, for the configured backend.

Every backend runs the same command in a checkout of the project, `dvc repro --single-item
<stage>`, so a task does exactly what `dvc repro` would do for that stage (skips it when its
deps and params are unchanged, re-runs it otherwise) and writes dvc.lock as usual:

- local:      BashOperator in `orchestration.checkout` on the Airflow worker;
- docker:     DockerOperator with the stage image, the checkout bind-mounted at /workspace;
- kubernetes: KubernetesPodOperator with the stage image, the checkout on a PVC at /workspace.

The checkout is shared by all tasks of a run (dvc.lock, DVC cache, Ray Train checkpoints), so
a retry resumes instead of starting over. Provider modules are imported only for the backend
in use: parsing the DAG must stay cheap (no Kubernetes client for a local setup).
"""

from __future__ import annotations

import shlex
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from alignflow.config import Params
from alignflow.config.orchestration import OrchestrationParams, quantity_bytes

WORKSPACE = "/workspace"  # where containers see the checkout
START_TASK = "start_run"  # the task that creates the MLflow parent run (XCom: run_id, tracking_uri)
PULL_TASK = "dvc_pull"
PUSH_TASK = "dvc_push"
PROMOTE_TASK = "promote"  # after eval: `alignflow promote` moves `champion` once dvc.lock has eval
DVC_REMOTE_NAME = "alignflow"
SKIP_EXIT_CODE = 99  # Airflow marks a task that exits with it as skipped (all three operators)


def xcom(key: str) -> str:
    """A Jinja reference to the start task's output, rendered when a task runs."""
    return "{{ ti.xcom_pull(task_ids='%s', key='%s') }}" % (START_TASK, key)


def stage_env(params: Params) -> dict[str, str]:
    """What every stage process gets: the parent run to attach to, where MLflow and Ray are."""
    env = {
        "ALIGNFLOW_PARENT_RUN_ID": xcom("run_id"),
        # The URI the start task resolved, so the children log to the parent's server.
        "MLFLOW_TRACKING_URI": xcom("tracking_uri"),
    }
    if params.ray.address:
        env["RAY_ADDRESS"] = params.ray.address
    return env


def stage_script(stage: str) -> str:
    return f"dvc repro --single-item {shlex.quote(stage)}"


def dvc_sync_script(action: str, remote: str | None, endpoint_url: str | None = None) -> str:
    """`dvc pull` before the stages / `dvc push` after them; exit 99 (skipped) with no remote."""
    if action not in ("pull", "push"):
        raise ValueError(f"action must be pull or push, got {action!r}")
    if not remote:
        return f"echo 'orchestration.dvc_remote is not set: nothing to {action}'; exit {SKIP_EXIT_CODE}"
    # --local: the remote goes to .dvc/config.local, never into the committed config.
    add = f"dvc remote add --local --force {DVC_REMOTE_NAME} {shlex.quote(remote)}"
    if endpoint_url:
        add += f" && dvc remote modify --local {DVC_REMOTE_NAME} endpointurl {shlex.quote(endpoint_url)}"
    if action == "pull":
        # --allow-missing: a first run has nothing on the remote yet; --run-cache lets
        # `dvc repro` restore stages it has seen with the same deps instead of re-running them.
        return f"{add} && dvc pull --remote {DVC_REMOTE_NAME} --run-cache --allow-missing"
    return f"{add} && dvc push --remote {DVC_REMOTE_NAME} --run-cache"


def task_defaults(orch: OrchestrationParams) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "retries": orch.retries,
        "retry_delay": timedelta(seconds=orch.retry_delay_s),
    }
    if orch.stage_timeout_h:
        defaults["execution_timeout"] = timedelta(hours=orch.stage_timeout_h)
    return defaults


class OperatorFactory:
    """Builds the command tasks (stages, dvc pull, dvc push) for one backend."""

    def __init__(self, params: Params, checkout: Path, python_bin: Path | None = None):
        self.params = params
        self.orch = params.orchestration
        self.checkout = Path(checkout)
        # local backend: the venv whose `dvc` and `python` run the stages (the worker's own).
        self.python_bin = Path(python_bin or Path(sys.executable).parent)

    def stage(self, stage: str, **kwargs):
        return self._operator(stage, stage_script(stage), gpus=self.orch.gpu_count(stage), **kwargs)

    def promote(self, **kwargs):
        """`alignflow promote` in the checkout, after eval's `dvc repro` committed its outputs."""
        return self._operator(PROMOTE_TASK, "python -m alignflow.cli promote", gpus=0, **kwargs)

    def dvc_sync(self, action: str, **kwargs):
        task_id = PULL_TASK if action == "pull" else PUSH_TASK
        script = dvc_sync_script(action, self.orch.dvc_remote, self.orch.dvc_endpoint_url)
        return self._operator(task_id, script, gpus=0, **kwargs)

    def _operator(self, task_id: str, script: str, gpus: int, **kwargs):
        build = {"local": self._local, "docker": self._docker, "kubernetes": self._kubernetes}[self.orch.backend]
        return build(task_id, f"set -euo pipefail\n{script}", gpus, **kwargs)

    def _local(self, task_id: str, script: str, gpus: int, **kwargs):
        from airflow.providers.standard.operators.bash import BashOperator

        # `dvc` and the stages' `python -m components.<stage>` come from the project's venv.
        path = f"export PATH={shlex.quote(str(self.python_bin))}:\"$PATH\"\n"
        return BashOperator(
            task_id=task_id,
            bash_command=path + script,
            cwd=str(self.checkout),
            env=stage_env(self.params),
            append_env=True,
            skip_on_exit_code=SKIP_EXIT_CODE,
            **kwargs,
        )

    def _docker(self, task_id: str, script: str, gpus: int, **kwargs):
        from docker.types import DeviceRequest, Mount

        from alignflow.orchestration.docker_operator import StageDockerOperator

        docker = self.orch.docker
        return StageDockerOperator(
            task_id=task_id,
            image=self.orch.image,
            command=["bash", "-c", script],
            working_dir=WORKSPACE,
            mounts=[Mount(target=WORKSPACE, source=docker.workspace, type="bind")],
            mount_tmp_dir=False,
            environment=stage_env(self.params),
            env_passthrough=docker.env_passthrough,
            shm_size=quantity_bytes(self.orch.shm_size),
            device_requests=[DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None,
            docker_url=docker.url,
            network_mode=docker.network_mode,
            auto_remove="success",
            skip_on_exit_code=SKIP_EXIT_CODE,
            **kwargs,
        )

    def _kubernetes(self, task_id: str, script: str, gpus: int, **kwargs):
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from airflow.providers.cncf.kubernetes.secret import Secret
        from kubernetes.client import models as k8s

        kube = self.orch.kubernetes
        requests = {"cpu": kube.cpu_request, "memory": kube.memory_request}
        limits = {"memory": kube.memory_limit} if kube.memory_limit else {}
        if gpus:  # extended resources: the limit is the request
            limits[kube.gpu_resource] = str(gpus)
        volumes = [
            # PyTorch dataloader workers and NCCL exchange tensors through /dev/shm; the
            # container runtime's default of 64 MB makes them crash.
            k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=self.orch.shm_size)),
            k8s.V1Volume(
                name="workspace",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=kube.workspace_pvc),
            ),
        ]
        mounts = [
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE),
        ]
        tolerations = (
            [k8s.V1Toleration(key=kube.gpu_resource, operator="Exists", effect="NoSchedule")] if gpus else None
        )
        return KubernetesPodOperator(
            task_id=task_id,
            name=f"alignflow-{task_id}".replace("_", "-"),
            namespace=kube.namespace,
            image=self.orch.image,
            cmds=["bash", "-c"],
            arguments=[f"cd {WORKSPACE}\n{script}"],
            env_vars=stage_env(self.params),
            # Each Secret's keys become env vars (envFrom): credentials never pass through params.
            secrets=[Secret("env", None, name) for name in self.orch.secrets],
            container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
            volumes=volumes,
            volume_mounts=mounts,
            node_selector={**kube.node_selector, **(kube.gpu_node_selector if gpus else {})} or None,
            tolerations=tolerations,
            service_account_name=kube.service_account,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in kube.image_pull_secrets] or None,
            # The image runs as uid 1000; fsGroup lets it write the workspace volume.
            security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=1000, fs_group=1000),
            labels={"app.kubernetes.io/name": "alignflow", "alignflow/task": task_id.replace("_", "-")},
            startup_timeout_seconds=kube.startup_timeout_s,
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
            skip_on_exit_code=SKIP_EXIT_CODE,
            **kwargs,
        )
