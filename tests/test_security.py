"""Secure by default (docs/SECURITY.md): the compose stack publishes on loopback only, requires
its secrets, asks for an Airflow login, never publishes Ray and hands the Docker socket through
its own group; a NetworkPolicy guards the Ray head; models run no remote code and load only
safetensors; credentials stay out of MLflow params and logs."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
RAYCLUSTER = ROOT / "deploy" / "kuberay-raycluster.yaml"
NETWORKPOLICY = ROOT / "deploy" / "ray-networkpolicy.yaml"

BIND = "${ALIGNFLOW_BIND_ADDRESS:-127.0.0.1}"
RAY_PORTS = {6379, 8265, 10001}
# Interpolations in a compose value: ${NAME}, ${NAME:-default}, ${NAME:?error}, ... ($$ is a literal $).
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
SECRET_VAR = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|DOCKER_GID")
# The values a test run hands to a compose implementation (none is ever used for real).
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "test-pg-0123456789",
    "MINIO_ROOT_USER": "testuser",
    "MINIO_ROOT_PASSWORD": "test-minio-0123456789",
    "AIRFLOW_JWT_SECRET": "test-jwt-0123456789abcdef",
    "AIRFLOW_ADMIN_PASSWORD": "test-admin-0123456789",
    "DOCKER_GID": "998",
}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def strings(tree):
    """Every string in a parsed YAML tree (keys and values)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from strings(v)
    elif isinstance(tree, str):
        yield tree


def interpolations(text: str):
    return list(INTERPOLATION.finditer(text.replace("$$", "")))


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def published(service: dict) -> list[tuple[str | None, str, int]]:
    """(host ip, host port, container port) of each published port, short or long syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published", "")), int(str(port["target"]).split("/")[0])))
            continue
        spec = str(port).split("/")[0]
        if spec.startswith(BIND + ":"):
            host_ip, rest = BIND, spec[len(BIND) + 1:]
        else:
            parts = spec.rsplit(":", 2)
            host_ip, rest = (parts[0], ":".join(parts[1:])) if len(parts) == 3 else (None, spec)
        host, _, container = rest.rpartition(":")
        out.append((host_ip, host or container, int(container.split("-")[0])))
    return out


# --- compose: published ports --------------------------------------------------------------------


def test_compose_publishes_ports_on_loopback_only():
    ports = {name: published(svc) for name, svc in services().items()}
    assert any(ports.values()), "the stack publishes nothing: the UIs are unreachable"
    for name, entries in ports.items():
        for host_ip, host, container in entries:
            assert host_ip in (BIND, "127.0.0.1"), (
                f"{name}: port {host}->{container} binds to {host_ip or 'every interface'}; "
                f"use {BIND}:{host}:{container}"
            )
    for name, svc in services().items():
        assert svc.get("network_mode") != "host", f"{name}: host networking publishes every port"
        assert not svc.get("privileged"), f"{name}: privileged"


def test_compose_never_publishes_ray():
    for name, svc in services().items():
        leaked = {c for _, _, c in published(svc)} & RAY_PORTS
        assert not leaked, f"{name} publishes Ray's port(s) {sorted(leaked)}: they run code for whoever reaches them"
    assert not services()["ray-head"].get("ports"), "ray-head: nothing of Ray is published"
    # Still reachable for the stage containers on the compose network.
    assert "--ray-client-server-port=10001" in services()["ray-head"]["command"]


# --- compose: secrets ----------------------------------------------------------------------------


def test_compose_secrets_are_required_and_have_no_default():
    seen = set()
    for text in strings(compose()):
        for m in interpolations(text):
            if SECRET_VAR.search(m["name"]) or m["name"] == "MINIO_ROOT_USER":
                seen.add(m["name"])
                assert m["op"] == ":?" and m["arg"].strip(), (
                    f"${{{m['name']}{m['op'] or ''}{m['arg']}}}: a secret must be required "
                    f"(${{{m['name']}:?message}}), never defaulted"
                )
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD",
            "DOCKER_GID"} <= seen


def test_compose_secret_values_come_from_required_variables():
    """Every environment value whose name says secret, and every password in a URL, is a required
    interpolation: no literal credential anywhere in the file."""
    for name, svc in services().items():
        for key, value in env_of(svc).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key) and not key.endswith("_FILE"):
                found = interpolations(value)
                assert found and all(m["op"] == ":?" for m in found), f"{name}: {key}={value!r}"
                assert INTERPOLATION.sub("", value.replace("$$", "")) == "", f"{name}: {key} has a literal part"
    for text in strings(compose()):
        for m in re.finditer(r"://[^\s:/@]+:(?P<pw>\$\{[^}]*\}|[^\s@/]+)@", text):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", m["pw"]), f"a literal password in {text!r}"


def test_env_example_has_placeholders_only():
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    required = {m["name"] for text in strings(compose()) for m in interpolations(text) if m["op"] == ":?"}
    assert required - set(values) == set(), "every required variable is listed in docker/.env.example"
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD",
                "DOCKER_GID"):
        assert values[key] == "", f"{key}={values[key]!r}: a working value in the example would be used as is"
    assert values["ALIGNFLOW_BIND_ADDRESS"] == "127.0.0.1"


# --- compose: Airflow auth, Docker socket ------------------------------------------------------------


def airflow_services() -> dict[str, dict]:
    return {n: s for n, s in services().items() if n.startswith("airflow-")}


def test_compose_airflow_requires_a_login():
    assert airflow_services()
    for name, svc in airflow_services().items():
        env = env_of(svc)
        all_admins = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "false")
        assert all_admins.strip().lower() in ("false", "0", ""), f"{name}: all_admins = no login, everyone admin"
        manager = env.get("AIRFLOW__CORE__AUTH_MANAGER", "")
        assert manager.endswith(("SimpleAuthManager", "FabAuthManager", "KeycloakAuthManager")), f"{name}: {manager!r}"
        if manager.endswith("SimpleAuthManager"):
            users = rendered(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"], {})  # the default user
            assert re.fullmatch(r"[^,:]+:(viewer|user|op|admin)(,[^,:]+:(viewer|user|op|admin))*", users), users
    api = env_of(services()["airflow-apiserver"])
    assert api["AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    for name, svc in airflow_services().items():  # only the api-server holds the login's password
        if name != "airflow-apiserver":
            assert "AIRFLOW_ADMIN_PASSWORD" not in env_of(svc), name


def rendered(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation, enough for this file ($$ is a literal $)."""
    def sub(m):
        if m["op"] in (":?", "?") and not env.get(m["name"]):
            raise KeyError(m["name"])
        return env.get(m["name"]) or (m["arg"] if m["op"] in (":-", "-") else "")
    return "$".join(INTERPOLATION.sub(sub, part) for part in value.split("$$"))


def test_compose_airflow_login_works_with_the_configured_password(tmp_path):
    """The api-server's start command writes the admin's password where SimpleAuthManager reads it:
    Airflow's own login accepts it and refuses any other (run with a stub `airflow` binary)."""
    pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")
    svc = services()["airflow-apiserver"]
    password = 'pä ss"wörd $x'
    values = {**TEST_SECRETS, "AIRFLOW_ADMIN_PASSWORD": password, "AIRFLOW_ADMIN_USER": "alice",
              "ALIGNFLOW_WORKSPACE": str(tmp_path)}
    env = {k: rendered(v, values) for k, v in env_of(svc).items() if k.startswith(("AIRFLOW", "ALIGNFLOW"))}
    pwfile = tmp_path / "passwords.json"
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(pwfile)  # /opt/airflow in the image
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")  # no PostgreSQL here
    env.pop("AIRFLOW__CORE__DAGS_FOLDER")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "airflow").write_text('#!/bin/sh\necho "airflow $*" > "$STUB_LOG"\n')
    (bindir / "airflow").chmod(0o755)
    base = {"PATH": f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
            "AIRFLOW_HOME": str(tmp_path / "home"), "STUB_LOG": str(tmp_path / "stub.log"), **env}
    command = [rendered(part, values) for part in svc["command"]]
    assert command[:2] == ["bash", "-c"]
    subprocess.run(command, env=base, check=True, timeout=60)
    assert (tmp_path / "stub.log").read_text().strip() == "airflow api-server"
    assert pwfile.stat().st_mode & 0o077 == 0, "the passwords file is private"
    assert json.loads(pwfile.read_text()) == {"alice": password}
    check = """
import sys
from fastapi import HTTPException
from airflow.api_fastapi.app import init_auth_manager
from airflow.api_fastapi.auth.managers.simple.datamodels.login import LoginBody
from airflow.api_fastapi.auth.managers.simple.services.login import SimpleAuthManagerLogin
from airflow.configuration import conf
assert not conf.getboolean("core", "simple_auth_manager_all_admins")
init_auth_manager()
assert SimpleAuthManagerLogin.create_token(LoginBody(username="alice", password=sys.argv[1]))
for user, pw in (("alice", "wrong"), ("admin", sys.argv[1])):
    try:
        SimpleAuthManagerLogin.create_token(LoginBody(username=user, password=pw))
    except HTTPException as err:
        assert err.status_code == 401, err
    else:
        raise SystemExit(f"{user}/{pw}: logged in")
print("LOGIN-OK")
"""
    out = subprocess.run([sys.executable, "-c", check, password], env=base, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0 and "LOGIN-OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


def test_compose_docker_socket_only_to_the_scheduler_through_its_group():
    holders = {n for n, s in services().items() if any("docker.sock" in str(v) for v in s.get("volumes") or [])}
    assert holders == {"airflow-scheduler"}, holders
    svc = services()["airflow-scheduler"]
    groups = [str(g) for g in svc.get("group_add") or []]
    assert groups, "the scheduler needs the socket's group"
    for group in groups:
        assert group not in ("0", "root"), "group 0 (root)"
        [m] = interpolations(group)
        assert m["name"] == "DOCKER_GID" and m["op"] == ":?", f"{group}: DOCKER_GID, required, no default"
    assert str(svc.get("user", "")).split(":")[0] not in ("0", "root")


# --- compose: a real implementation renders it -------------------------------------------------------


def compose_command() -> list[str] | None:
    """A compose implementation that has `config`: docker compose v2, podman compose, podman-compose
    (>= 1.1), docker-compose v2."""
    for cmd in (["docker", "compose"], ["podman", "compose"], ["podman-compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            ok = subprocess.run([*cmd, "config", "--help"], capture_output=True, text=True, timeout=60)
            version = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # (`docker compose ...` without the compose plugin is the docker CLI's own usage text)
        if version.returncode != 0 or "compose" not in (version.stdout + version.stderr).lower():
            continue
        if ok.returncode != 0 or "config" not in (ok.stdout + ok.stderr).lower():
            continue
        if cmd == ["docker-compose"] and re.search(r"version 1\.", version.stdout + version.stderr):
            continue  # compose v1 predates the compose spec (top-level `name:`)
        return cmd
    return None


@pytest.fixture(scope="module")
def compose_cmd():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no compose implementation with `config` (docker compose, podman compose, podman-compose >= 1.1)")
    return cmd


def run_config(cmd, project: Path, env: dict[str, str], *extra: str):
    base = {k: os.environ[k] for k in ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINERS_CONF", "DOCKER_HOST")
            if k in os.environ}
    return subprocess.run([*cmd, *extra, "-f", str(project / "docker" / "compose.yaml"), "config"],
                          cwd=project, env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    """The compose file and what it references, without the developer's docker/.env."""
    (tmp_path / "docker").mkdir()
    for path in (ROOT / "docker").iterdir():
        if path.is_file() and (path.suffix in (".yaml", ".sql") or path.name.endswith("Dockerfile")):
            shutil.copy(path, tmp_path / "docker" / path.name)
    shutil.copy(ENV_EXAMPLE, tmp_path / "docker" / "example.env")
    return tmp_path


def test_compose_config_fails_without_the_secrets(compose_cmd, project):
    out = run_config(compose_cmd, project, {"ALIGNFLOW_WORKSPACE": str(project)})
    assert out.returncode != 0
    assert re.search(r"required variable \w+ is missing a value", out.stdout + out.stderr), out.stderr[-2000:]
    # The example file as it is: placeholders, not working values.
    out = run_config(compose_cmd, project, {"ALIGNFLOW_WORKSPACE": str(project)},
                     "--env-file", str(project / "docker" / "example.env"))
    assert out.returncode != 0 and "missing a value" in out.stdout + out.stderr, out.stderr[-2000:]


def test_compose_config_renders_with_the_secrets(compose_cmd, project):
    env = {"ALIGNFLOW_WORKSPACE": str(project), **TEST_SECRETS}
    out = run_config(compose_cmd, project, env)
    assert out.returncode == 0, out.stderr[-3000:]
    svcs = yaml.safe_load(out.stdout)["services"]
    hosts = {(name, ip) for name, s in svcs.items() for ip, _, _ in published(s)}
    assert {name for name, _ in hosts} == {"airflow-apiserver", "mlflow", "minio"}
    assert {ip for _, ip in hosts} == {"127.0.0.1"}
    assert not any({c for _, _, c in published(s)} & RAY_PORTS for s in svcs.values())
    assert [str(g) for g in svcs["airflow-scheduler"]["group_add"]] == ["998"]
    assert env_of(svcs["postgres"])["POSTGRES_PASSWORD"] == TEST_SECRETS["POSTGRES_PASSWORD"]
    assert TEST_SECRETS["POSTGRES_PASSWORD"] in " ".join(svcs["mlflow"]["command"])
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env_of(svcs["airflow-apiserver"])
    # Published elsewhere only when asked to.
    out = run_config(compose_cmd, project, {**env, "ALIGNFLOW_BIND_ADDRESS": "0.0.0.0"})
    assert out.returncode == 0, out.stderr[-3000:]
    svcs = yaml.safe_load(out.stdout)["services"]
    assert {ip for s in svcs.values() for ip, _, _ in published(s)} == {"0.0.0.0"}


# --- Kubernetes: the Ray head's NetworkPolicy ---------------------------------------------------------


def _check_model(data, type_name: str, where: str) -> None:
    """`data` fits the Kubernetes API type (the python client's models): no unknown field, right types."""
    from kubernetes import client

    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: a list"
        for i, item in enumerate(data):
            _check_model(item, type_name[5:-1], f"{where}[{i}]")
    elif type_name.startswith(("dict(", "dict[")):  # dict(str, str) or dict[str, str], by client version
        assert isinstance(data, dict), f"{where}: a mapping"
        value_type = type_name[5:-1].split(",", 1)[1].strip()
        for k, v in data.items():
            assert isinstance(k, str), where
            _check_model(v, value_type, f"{where}.{k}")
    elif type_name in ("str", "int", "bool"):
        assert isinstance(data, {"str": str, "int": int, "bool": bool}[type_name]), f"{where}: {type_name}"
    elif type_name == "object":
        assert isinstance(data, (str, int, dict, list)), where  # IntOrString and free-form
    else:
        cls = getattr(client, type_name)
        assert isinstance(data, dict), f"{where}: a {type_name}"
        fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        unknown = set(data) - set(fields)
        assert not unknown, f"{where}: {sorted(unknown)} are not fields of {type_name}"
        for key, value in data.items():
            _check_model(value, cls.openapi_types[fields[key]], f"{where}.{key}")


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def allowed(policy: dict, peer: dict[str, str], port: int) -> bool:
    """Whether `policy` lets a pod of the same namespace with labels `peer` connect on `port`."""
    for rule in policy["spec"].get("ingress") or []:
        peers = rule.get("from")
        ports = rule.get("ports")
        peer_ok = peers is None or any(
            "podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], peer) for p in peers
        )
        port_ok = ports is None or any(p.get("port") == port for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def kuberay_pod_labels(cluster: dict, group: dict, node_type: str, group_name: str) -> dict[str, str]:
    """The labels KubeRay puts on a RayCluster's pods; the template's own labels win."""
    labels = {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": node_type,
              "ray.io/group": group_name, "ray.io/is-ray-node": "yes",
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    return {**labels, **((group["template"].get("metadata") or {}).get("labels") or {})}


def test_networkpolicy_guards_the_ray_head():
    from kubernetes import client

    docs = [d for d in yaml.safe_load_all(NETWORKPOLICY.read_text()) if d]
    assert docs and all(d["kind"] == "NetworkPolicy" and d["apiVersion"] == "networking.k8s.io/v1" for d in docs)
    for doc in docs:
        _check_model(doc, "V1NetworkPolicy", doc["metadata"]["name"])
        # The client builds the object (required fields present).
        obj = client.ApiClient()._ApiClient__deserialize(doc, "V1NetworkPolicy")
        assert obj.spec.pod_selector is not None and "Ingress" in obj.spec.policy_types
        for rule in doc["spec"].get("ingress") or []:
            assert rule.get("from"), "an ingress rule without `from` admits every pod"
            for peer in rule["from"]:
                assert "ipBlock" not in peer and (peer.get("podSelector") or {}) != {}, f"{peer}: too wide"

    cluster = yaml.safe_load(RAYCLUSTER.read_text())
    head_group = cluster["spec"]["headGroupSpec"]
    head = kuberay_pod_labels(cluster, head_group, "head", "headgroup")
    workers = [kuberay_pod_labels(cluster, g, "worker", g["groupName"]) for g in cluster["spec"]["workerGroupSpecs"]]
    # The stage pods' labels, as the kubernetes backend sets them.
    operators = (ROOT / "src" / "alignflow" / "orchestration" / "operators.py").read_text()
    assert '"app.kubernetes.io/name": "alignflow"' in operators
    stage = {"app.kubernetes.io/name": "alignflow", "alignflow/task": "sft"}
    airflow = {"tier": "airflow", "component": "scheduler", "release": "airflow"}
    stranger = {"app": "jupyter"}

    [policy] = [d for d in docs if selects(d["spec"]["podSelector"], head)]
    assert not any(selects(policy["spec"]["podSelector"], w) for w in workers)
    assert not selects(policy["spec"]["podSelector"], stage)
    head_ports = {p["containerPort"] for p in head_group["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports == RAY_PORTS
    for worker in workers:
        assert all(allowed(policy, worker, p) for p in (*RAY_PORTS, 40123)), "Ray nodes use every port"
    for peer in (stage, airflow):
        assert allowed(policy, peer, 10001) and allowed(policy, peer, 8265)
        assert not allowed(policy, peer, 6379) and not allowed(policy, peer, 40123)
    for port in (*RAY_PORTS, 8080, 40123):
        assert not allowed(policy, stranger, port), f"another pod reaches the head on {port}"
    # The workers: the cluster's own pods only.
    for worker in workers:
        guards = [d for d in docs if selects(d["spec"]["podSelector"], worker)]
        assert guards, "the workers are guarded too"
        for peer in (stage, airflow, stranger):
            assert not any(allowed(g, peer, 40123) for g in guards)
        assert all(allowed(g, head, 40123) for g in guards)


# --- models: no remote code, safetensors only -----------------------------------------------------------


def test_trust_remote_code_defaults_to_false_everywhere():
    from alignflow.config import load_params
    from alignflow.config.common import ModelParams
    from alignflow.models import loading, specs

    for fn in (loading.load_tokenizer, loading.load_model_dir, loading.load_causal_lm, loading.load_reward_model,
               specs.resolve_spec):
        param = inspect.signature(fn).parameters["trust_remote_code"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False, fn.__name__
    assert ModelParams.model_fields["trust_remote_code"].default is False
    assert ModelParams.model_fields["trust_remote_code"].annotation is bool
    assert load_params(ROOT / "params.yaml").model.trust_remote_code is False


def test_trust_remote_code_must_be_a_real_bool():
    from alignflow.models import load_causal_lm, load_tokenizer, resolve_spec

    for value in ("false", "False", 0, None, "yes"):
        with pytest.raises(TypeError, match="trust_remote_code must be a bool"):
            load_causal_lm("tiny:llama", trust_remote_code=value)
    with pytest.raises(TypeError):
        load_tokenizer("tiny:llama", trust_remote_code="false")
    with pytest.raises(TypeError):
        resolve_spec("tiny:llama", trust_remote_code="false")


def test_models_load_with_safetensors_and_without_remote_code(monkeypatch):
    import transformers

    seen = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification):
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _original=original, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code"), kwargs.get("use_safetensors")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    from alignflow.models import load_causal_lm, load_reward_model

    load_causal_lm("tiny:llama", device="cpu")
    load_reward_model("tiny:llama", device="cpu")
    assert [s[0] for s in seen] == ["AutoModelForCausalLM", "AutoModelForSequenceClassification"]
    assert all(trust is False and safetensors is True for _, trust, safetensors in seen), seen


def test_pickled_checkpoints_are_refused(tmp_path):
    import torch
    from safetensors.torch import load_file

    from alignflow.models import META_FILE, ModelSpecError, load_causal_lm, resolve_spec

    tiny = Path(resolve_spec("tiny:llama"))
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny, model_dir)
    state = {}
    for weights in model_dir.glob("*.safetensors"):
        state.update(load_file(weights))
        weights.unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match=r"no \*\.safetensors weights.*pytorch_model\.bin"):
        load_causal_lm(str(model_dir), device="cpu")

    # A PEFT adapter saved as a pickle (adapter_model.bin) is refused too.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in tiny.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(name, adapter / name.name)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save({}, adapter / "adapter_model.bin")
    (adapter / META_FILE).write_text(json.dumps({"kind": "causal_lm", "adapter": True, "base": "tiny:llama"}))
    with pytest.raises(ModelSpecError, match="only safetensors adapters"):
        load_causal_lm(str(adapter), device="cpu")


def test_hub_downloads_fetch_no_pickles_and_no_code_unless_trusted(tmp_path, monkeypatch):
    import huggingface_hub

    from alignflow.models import ModelSpecError, resolve_spec

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    calls = []

    def fake_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert resolve_spec("someorg/some-model") == str(snapshot)
    assert resolve_spec("someorg/some-model", trust_remote_code=True) == str(snapshot)
    untrusted, trusted = calls
    assert "*.safetensors" in untrusted and "*.py" not in untrusted
    assert "*.py" in trusted
    pickles = (".bin", ".pt", ".pth", ".pkl", ".ckpt", "*")
    assert not any(p.endswith(pickles) for p in untrusted + trusted if p != "*.py")
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(ModelSpecError, match="no \\*.safetensors"):
        resolve_spec("someorg/some-model")


# --- credentials: MLflow params, logs, the LLM judge ------------------------------------------------------


def test_redact_secrets_masks_credentials_and_keeps_the_rest():
    from alignflow.secrets import REDACTED, redact_secrets

    params = {
        "rank": {"llm": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-abcdefghijklmnopqrstuvwx",
                         "base_url": "https://user:hunter22@llm.example/v1", "max_new_tokens": 8}},
        "tracking.tracking_uri": "postgresql+psycopg2://alignflow:pgpass@postgres:5432/mlflow",
        "hf_token": "hf_" + "a" * 34,
        "password": "plain words",
        "MLFLOW_TRACKING_TOKEN": "abc123",
        "AWS_SECRET_ACCESS_KEY": "minio-secret",
        "aws_access_key_id": "alignflow",  # an access key id that is a plain name stays readable
        "db": {"Password": 12345, "secretKey": {"nested": "value"}},
        "orchestration.secrets": ["alignflow-s3", "alignflow-mlflow"],
        "orchestration.docker.env_passthrough": ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN"],
        "orchestration.kubernetes.image_pull_secrets": ["ghcr"],
        "model.trust_remote_code": False,
        "sample.max_new_tokens": 96,
        "tokenizer": "gpt2",
        "pad_token": "<pad>",
        "sort_key": "prompt",
        "x.api_key_env": "sk-abcdefghijklmnopqrstuvwx",  # a key pasted where a variable's name belongs
        "token": None,
        "notes": "uses key hf_" + "b" * 34 + " for the hub",
    }
    before = json.loads(json.dumps(params))
    out = redact_secrets(params)
    assert params == before, "the input is not modified"
    assert out["rank"]["llm"] == {"api_key_env": "OPENAI_API_KEY", "api_key": REDACTED,
                                  "base_url": f"https://user:{REDACTED}@llm.example/v1", "max_new_tokens": 8}
    assert out["tracking.tracking_uri"] == f"postgresql+psycopg2://alignflow:{REDACTED}@postgres:5432/mlflow"
    for key in ("hf_token", "password", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "x.api_key_env"):
        assert out[key] == REDACTED, key
    assert out["db"] == {"Password": REDACTED, "secretKey": {"nested": REDACTED}}
    for key in ("aws_access_key_id", "orchestration.secrets", "orchestration.docker.env_passthrough",
                "orchestration.kubernetes.image_pull_secrets", "model.trust_remote_code", "sample.max_new_tokens",
                "tokenizer", "pad_token", "sort_key", "token"):
        assert out[key] == params[key], key
    assert out["notes"] == f"uses key {REDACTED} for the hub"
    assert "hunter22" not in json.dumps(out) and "pgpass" not in json.dumps(out)


def test_redact_secrets_leaves_the_real_params_alone():
    """No false positives on what the stages log: the whole params.yaml, flat (MLflow params) and
    nested (the params.yaml artifact), comes through unchanged."""
    from alignflow.config import flatten, load_params
    from alignflow.secrets import redact_secrets

    dumped = load_params(ROOT / "params.yaml").model_dump(mode="json")
    assert redact_secrets(dumped) == dumped
    flat = flatten(dumped)
    assert redact_secrets(flat) == flat


def test_redacting_log_filter():
    from alignflow.secrets import REDACTED, RedactingFilter, redact_text

    assert redact_text("password=hunter2 max_new_tokens=96") == f"password={REDACTED} max_new_tokens=96"
    assert redact_text('{"api_key": "abc", "tokens": 5}') == f'{{"api_key": "{REDACTED}", "tokens": 5}}'
    assert redact_text("Authorization: Bearer abcdefghijklmnopqrstuvwxyz") == f"Authorization: {REDACTED}"
    assert redact_text("cache key: 0123abcd, 12 tokens: ok") == "cache key: 0123abcd, 12 tokens: ok"
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("alignflow.test_security")
    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting to %s", "postgresql://u:topsecret@db/x")
    finally:
        logger.removeHandler(handler)
    assert records == [f"connecting to postgresql://u:{REDACTED}@db/x"]


def test_llm_judge_reads_its_key_from_the_environment_only(monkeypatch):
    from pydantic import ValidationError

    from alignflow.config.rlhf import LLMJudgeParams
    from alignflow.rlhf.judges import HTTPChatBackend
    from alignflow.secrets import is_secret_key

    # No params field holds a key's value: only the *name* of the variable.
    secret_fields = {f for f in LLMJudgeParams.model_fields if is_secret_key(f)}
    assert secret_fields == {"api_key_env"}
    with pytest.raises(ValidationError):
        LLMJudgeParams(api_key="sk-abcdefghijklmnopqrstuvwx")
    monkeypatch.setenv("ALIGNFLOW_TEST_JUDGE_KEY", "sk-from-the-environment")
    backend = HTTPChatBackend("http://127.0.0.1:9/v1", "m", api_key_env="ALIGNFLOW_TEST_JUDGE_KEY")
    assert backend.api_key == "sk-from-the-environment"
    monkeypatch.delenv("ALIGNFLOW_TEST_JUDGE_KEY")
    assert HTTPChatBackend("http://127.0.0.1:9/v1", "m", api_key_env="ALIGNFLOW_TEST_JUDGE_KEY").api_key is None
