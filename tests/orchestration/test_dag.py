"""The Airflow DAG: imports cleanly and cheaply, mirrors dvc.yaml, and builds the right
operator per backend (Kubernetes pod specs rendered without a cluster)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import jinja2
import yaml

from alignflow import STAGES
from alignflow.config import validate
from alignflow.orchestration.dvc_graph import load_pipeline
from alignflow.smoke import merged_params
from tests.conftest import ROOT

DAG_FILE = ROOT / "dags" / "alignflow_retrain.py"
TRAINING = {"sft", "reward", "align"}
COMMAND_TASKS = {"dvc_pull", "dvc_push", "promote", *STAGES}


def load_dag(project: Path = ROOT):
    """Import the DAG file of `project` (its dags/ folder beside dvc.yaml and params.yaml)."""
    spec = importlib.util.spec_from_file_location(f"dag_{uuid.uuid4().hex}", project / "dags" / DAG_FILE.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retrain_dag


def mini_project(tmp_path: Path, overrides: dict) -> Path:
    """dvc.yaml + params.yaml (with overrides) + the DAG file: all the DAG reads at parse time."""
    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    shutil.copy(DAG_FILE, project / "dags")
    shutil.copy(ROOT / "dvc.yaml", project)
    (project / "params.yaml").write_text(yaml.safe_dump(merged_params(ROOT, None, overrides)))
    return project


class FakeTI:
    def xcom_pull(self, task_ids, key):
        return f"<{task_ids}.{key}>"


def render(value: str) -> str:
    return jinja2.Template(value).render(ti=FakeTI(), run_id="manual__1")


# What parsing the DAG may import beyond Airflow itself: the Airflow image has Airflow, its
# providers, mlflow-skinny and alignflow without dependencies - no torch, DVC, numpy, ...
PARSE_TIME_MODULES = {"alignflow", "croniter", "yaml", "pydantic", "pydantic_core", "annotated_types",
                      "typing_inspection", "pendulum", "jinja2", "markupsafe"}


def test_dag_file_imports_fast_and_light():
    code = """
import importlib.util, json, sys, time
import airflow.sdk  # Airflow's own import cost is not the DAG file's
from airflow.dag_processing.dagbag import DagBag
before = {m.split(".")[0] for m in sys.modules}
t = time.process_time()  # CPU time: what parsing costs, whatever else the machine is doing
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
seconds = time.process_time() - t
new = sorted({m.split(".")[0] for m in sys.modules} - before)
bag = DagBag(dag_folder=sys.argv[2])
print(json.dumps({"seconds": seconds, "new_modules": new, "dags": sorted(bag.dag_ids),
                  "errors": {k: str(v) for k, v in bag.import_errors.items()}}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(DAG_FILE), str(DAG_FILE.parent)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["dags"] == ["alignflow_retrain"]
    extra = sorted(set(result["new_modules"]) - PARSE_TIME_MODULES - {m for m in result["new_modules"] if m.startswith("_")})
    assert extra == [], f"parsing the DAG imports {extra}: heavy, and missing from the Airflow image"
    assert result["seconds"] < 2.0, f"parsing the DAG file took {result['seconds']:.1f}s of CPU"


def test_dag_structure_equals_dvc_yaml():
    dag = load_dag()
    pipeline = load_pipeline(ROOT / "dvc.yaml")
    assert set(dag.task_ids) == {"start_run", "finish_run", *COMMAND_TASKS}
    for stage in STAGES:
        upstream = dag.get_task(stage).upstream_task_ids
        assert upstream == (set(pipeline.upstream[stage]) or {"dvc_pull"}), stage
        assert dag.get_task(stage).bash_command.endswith(f"dvc repro --single-item {stage}")
    assert dag.get_task("dvc_pull").upstream_task_ids == {"start_run"}
    # champion moves only after eval's `dvc repro` committed its outputs, before the push
    assert dag.get_task("promote").upstream_task_ids == set(pipeline.leaves()) == {"eval"}
    assert dag.get_task("promote").bash_command.rstrip().endswith("python -m alignflow.cli promote")
    assert dag.get_task("dvc_push").upstream_task_ids == {"promote"}
    finish = dag.get_task("finish_run")
    assert finish.is_teardown and dag.get_task("start_run").is_setup
    assert finish.upstream_task_ids == {"dvc_push", "start_run"}
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert all(dag.get_task(t).retries == 2 for t in COMMAND_TASKS)


def test_schedule_is_weekly_or_new_raw_data(tmp_path):
    from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

    timetable = load_dag().timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.timetable.expression == "0 0 * * 0"
    assert timetable.asset_condition == Asset(uri="s3://alignflow/raw/", name="alignflow_raw_data")

    from alignflow.orchestration.schedule import build_schedule

    orch = validate({}).orchestration
    assert isinstance(build_schedule(orch.model_copy(update={"raw_data_asset": None})), CronTriggerTimetable)
    only_data = build_schedule(orch.model_copy(update={"schedule": None}))
    assert isinstance(only_data, Asset) and only_data.uri == "s3://alignflow/raw"
    assert build_schedule(orch.model_copy(update={"schedule": None, "raw_data_asset": None})) is None
    daily = build_schedule(orch.model_copy(update={"schedule": "30 2 * * *", "raw_data_asset": None}))
    assert daily.expression == "30 2 * * *"


def test_local_backend_env_and_skip_without_remote():
    dag = load_dag()
    clean = dag.get_task("clean")
    assert clean.cwd == str(ROOT) and clean.append_env
    env = {k: render(v) for k, v in clean.env.items()}
    assert env["ALIGNFLOW_PARENT_RUN_ID"] == "<start_run.run_id>"
    assert env["MLFLOW_TRACKING_URI"] == "<start_run.tracking_uri>"
    assert str(Path(sys.executable).parent) in clean.bash_command
    # No dvc_remote in params.yaml: pull/push exit 99, which Airflow records as skipped.
    assert dag.get_task("dvc_push").bash_command.rstrip().endswith("exit 99")
    assert dag.get_task("collect").trigger_rule == "none_failed"  # runs after a skipped pull


def test_kubernetes_pod_specs(tmp_path):
    secrets = ["alignflow-s3", "alignflow-mlflow"]
    project = mini_project(tmp_path, {
        "orchestration.backend": "kubernetes",
        "orchestration.image": "registry.example/alignflow-stage:9.9",
        "orchestration.gpus": {"sft": 2, "reward": 1, "align": 4},
        "orchestration.kubernetes.gpu_node_selector": {"pool": "gpu"},
        "orchestration.dvc_remote": "s3://bucket/dvc",
        "tracking.tracking_uri": "http://mlflow:5000",
        "ray.address": "ray://raycluster-head-svc:10001",
    })
    dag = load_dag(project)
    for task_id in COMMAND_TASKS:
        pod = dag.get_task(task_id).build_pod_request_obj(dry_run=True)  # no cluster needed
        spec = pod.spec
        container = spec.containers[0]
        assert container.image == "registry.example/alignflow-stage:9.9"
        gpus = {"sft": "2", "reward": "1", "align": "4"}.get(task_id)
        assert (container.resources.limits or {}).get("nvidia.com/gpu") == gpus, task_id
        assert "nvidia.com/gpu" not in (container.resources.requests or {})
        assert (spec.node_selector or {}).get("pool") == ("gpu" if gpus else None)
        assert bool(spec.tolerations) == bool(gpus)
        volumes = {v.name: v for v in spec.volumes}
        assert volumes["dshm"].empty_dir.medium == "Memory" and volumes["dshm"].empty_dir.size_limit == "8Gi"
        assert volumes["workspace"].persistent_volume_claim.claim_name == "alignflow-workspace"
        assert {m.mount_path: m.name for m in container.volume_mounts} == {"/dev/shm": "dshm", "/workspace": "workspace"}
        env = {e.name: render(e.value) for e in container.env}
        assert env["ALIGNFLOW_PARENT_RUN_ID"] == "<start_run.run_id>"
        assert env["MLFLOW_TRACKING_URI"] == "<start_run.tracking_uri>"
        assert env["RAY_ADDRESS"] == "ray://raycluster-head-svc:10001"
        # Credentials only as references to Kubernetes Secrets (envFrom), no values.
        assert [e.secret_ref.name for e in container.env_from] == secrets
        assert not any(e.value_from for e in container.env)
        assert spec.security_context.run_as_non_root and spec.security_context.fs_group == 1000
        script = container.args[0]
        assert script.startswith("cd /workspace")
        if task_id in STAGES:
            assert script.rstrip().endswith(f"dvc repro --single-item {task_id}")
    push = dag.get_task("dvc_push").build_pod_request_obj(dry_run=True).spec.containers[0].args[0]
    assert "dvc remote add --local --force alignflow s3://bucket/dvc" in push and "dvc push" in push


def test_docker_operator_config(tmp_path, monkeypatch):
    from alignflow.orchestration.docker_operator import StageDockerOperator

    project = mini_project(tmp_path, {
        "orchestration.backend": "docker",
        "orchestration.docker.workspace": "/srv/ws",
        "orchestration.docker.network_mode": "alignflow",
        "orchestration.shm_size": "2Gi",
        "orchestration.dvc_remote": "s3://alignflow/dvc",
        "orchestration.dvc_endpoint_url": "http://minio:9000",
        "tracking.tracking_uri": "http://mlflow:5000",
    })
    dag = load_dag(project)
    for task_id in COMMAND_TASKS:
        op = dag.get_task(task_id)
        assert isinstance(op, StageDockerOperator)
        assert op.image == "ghcr.io/alignflow/alignflow-stage:0.1.0"
        if task_id in TRAINING:
            [request] = op.device_requests
            assert request.count == 1 and request.capabilities == [["gpu"]]
        else:
            assert not op.device_requests, task_id
        assert op.shm_size == 2 * 2**30
        [mount] = op.mounts
        assert (mount["Target"], mount["Source"], mount["Type"]) == ("/workspace", "/srv/ws", "bind")
        assert op.working_dir == "/workspace" and op.network_mode == "alignflow"
        assert render(op.environment["ALIGNFLOW_PARENT_RUN_ID"]) == "<start_run.run_id>"
    pull = dag.get_task("dvc_pull").command[2]
    assert "dvc remote modify --local alignflow endpointurl http://minio:9000" in pull
    assert pull.rstrip().endswith("dvc pull --remote alignflow --run-cache --allow-missing")
    op = dag.get_task("sft")
    assert op.command[:2] == ["bash", "-c"] and op.command[2].endswith("dvc repro --single-item sft")
    # Credentials come from the worker's environment when the task runs, never from params.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert op.passthrough_values() == {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    assert "s3cr3t" not in json.dumps(op.environment)


def test_selected_stages(tmp_path):
    dag = load_dag(mini_project(tmp_path, {"orchestration.stages": ["collect", "synthesize", "clean"]}))
    assert set(dag.task_ids) == {"start_run", "dvc_pull", "collect", "synthesize", "clean", "dvc_push", "finish_run"}
    assert dag.get_task("dvc_push").upstream_task_ids == {"clean"}


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfiles = sorted((ROOT / "docker").glob("*Dockerfile"))
    assert {p.name for p in dockerfiles} >= {"stage.Dockerfile", "airflow.Dockerfile"}
    for path in dockerfiles:
        out = subprocess.run([str(hadolint), "--no-color", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{path.name}:\n{out.stdout}{out.stderr}"


def test_compose_stack_wiring():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "ray-head", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve().is_file(), name
    assert "postgresql" in " ".join(services["mlflow"]["command"])
    assert "s3://" in " ".join(services["mlflow"]["command"])


def test_kuberay_manifests_match_params():
    import ray

    from alignflow.config import load_params

    orch = load_params(ROOT / "params.yaml").orchestration
    cluster = yaml.safe_load((ROOT / "deploy" / "kuberay-raycluster.yaml").read_text())
    pvc = yaml.safe_load((ROOT / "deploy" / "workspace-pvc.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray.__version__
    assert pvc["metadata"]["name"] == orch.kubernetes.workspace_pvc and "ReadWriteMany" in pvc["spec"]["accessModes"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"] == orch.image
        claims = {v["name"]: v for v in pod["volumes"]}
        assert claims["workspace"]["persistentVolumeClaim"]["claimName"] == orch.kubernetes.workspace_pvc
        assert claims["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/dev/shm"}
        assert pod["securityContext"]["runAsUser"] == 1000
