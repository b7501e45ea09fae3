"""The policy registry as eval and chat see it: `alignflow-policy` with aliases `candidate`/`champion`.

- `policy_digest(dir)`: a content hash of a models/* dir, stored as a model-version tag, so eval
  can tell whether the `candidate` alias already points at the policy it is evaluating (the
  align stage registers it) or must register it itself.
- `download_version(...)`: a registered version's files in a local dir, ready for
  `load_causal_lm` (the dir that holds alignflow_model.json inside whatever was logged).
- `resolve_model_ref(ref)`: `champion` | `candidate` | `models:/…` | a path → a local model dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alignflow.evaluation.gate import CANDIDATE, CHAMPION, POLICY_MODEL
from alignflow.models import META_FILE

log = logging.getLogger(__name__)

DIGEST_TAG = "alignflow.content_digest"
PROFILE_TAG = "alignflow.profile"  # the params profile that trained it (smoke models never judge real ones)


def policy_digest(model_dir: str | os.PathLike) -> str:
    """sha256 over the dir's files (names + bytes), sorted; 16 hex chars."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


@dataclass
class RegisteredVersion:
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]


def get_alias(alias: str, name: str = POLICY_MODEL) -> RegisteredVersion | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return RegisteredVersion(str(mv.version), mv.run_id, mv.source, dict(mv.tags or {}))


def find_model_dir(root: Path) -> Path:
    """A loadable model dir under a download: the one holding alignflow_model.json (a logged
    models/* dir), else one rebuilt from an mlflow.transformers model (MLmodel)."""
    if (root / META_FILE).exists():
        return root
    found = sorted(root.rglob(META_FILE), key=lambda p: len(p.parts))
    if found:
        return found[0].parent
    mlmodel = sorted(root.rglob("MLmodel"), key=lambda p: len(p.parts))
    if mlmodel:
        return from_mlflow_transformers(mlmodel[0].parent)
    raise FileNotFoundError(f"{root}: neither {META_FILE} nor an MLflow model in the registered model's files")


def from_mlflow_transformers(model_root: Path) -> Path:
    """An alignflow model dir from an mlflow.transformers model (what the training stages log):
    tokenizer from components/tokenizer, and either the PEFT adapter (peft/) on the local base
    it was trained on (`local_base_model_path`), or the full weights (model/)."""
    import shutil

    import yaml

    spec = yaml.safe_load((model_root / "MLmodel").read_text())
    flavor = (spec.get("flavors") or {}).get("transformers")
    if not flavor:
        raise FileNotFoundError(f"{model_root}: an MLflow model without the transformers flavor")
    extra = spec.get("metadata") or {}
    out = model_root / "alignflow_model_dir"
    if out.exists():
        shutil.rmtree(out)
    tokenizer_dir = model_root / "components" / "tokenizer"
    meta = {"kind": extra.get("alignflow_kind") or "causal_lm", "registered_from": "mlflow.transformers"}
    if flavor.get("peft_adaptor"):
        base = flavor.get("local_base_model_path") or flavor.get("source_model_name")
        if not base or not Path(base).is_dir():
            # The recorded base is a local cache dir of the machine that trained it; loading the
            # adapter on another base (e.g. today's models/sft) would evaluate a different model.
            raise FileNotFoundError(f"{model_root}: the adapter's base model {base!r} is not on this machine")
        shutil.copytree(model_root / flavor["peft_adaptor"], out)
        meta.update(base=str(base), adapter=True)
    else:
        shutil.copytree(model_root / flavor.get("model_binary", "model"), out)
        meta["adapter"] = False
    if tokenizer_dir.is_dir():
        for f in tokenizer_dir.iterdir():
            shutil.copy2(f, out / f.name)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def download_version(version: str, dst: str | os.PathLike | None = None, name: str = POLICY_MODEL) -> Path:
    """A registered version's files in a local dir (a temp dir unless `dst`)."""
    import mlflow

    client = mlflow.MlflowClient()
    uri = client.get_model_version_download_uri(name, version)
    dst = Path(dst or tempfile.mkdtemp(prefix=f"alignflow-{name}-v{version}-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    model_dir = find_model_dir(local)
    # A registered adapter whose base is a relative project path would load onto whatever that
    # path holds now; when the registered files carry merged weights, use those instead.
    merged = model_dir / "merged"
    if (merged / "config.json").exists():
        log.info("alignflow-policy v%s: using its merged weights (%s)", version, merged)
        return merged
    return model_dir


def register_candidate(model_dir: str | os.PathLike, tracker, digest: str | None = None,
                       profile: str | None = None) -> str:
    """Log `model_dir` to the eval run and register it as a new version with alias `candidate`."""
    from alignflow import tracking

    digest = digest or policy_digest(model_dir)
    tracker.log_artifact(model_dir, artifact_path="policy")
    tags = {DIGEST_TAG: digest, "alignflow.registered_by": "eval", **({PROFILE_TAG: profile} if profile else {})}
    mv = tracking.register_artifacts(tracker.run_id, "policy", "align", aliases=(CANDIDATE,), tags=tags)
    return str(mv.version)


def ensure_candidate(model_dir: str | os.PathLike, tracker, profile: str | None = None) -> str:
    """The registry version of the policy under evaluation, registering it when needed.

    Reuses the `candidate` alias when its version carries this dir's content digest, or when it
    was registered by this pipeline run's align stage (same parent run); otherwise registers.
    """
    import mlflow

    digest = policy_digest(model_dir)
    current = get_alias(CANDIDATE)
    if current is not None:
        if current.tags.get(DIGEST_TAG) == digest:
            return current.version
        if current.run_id and tracker.parent_id and _parent_of(current.run_id) == tracker.parent_id:
            # Registered by this pipeline's align stage: stamp it with the digest for next time.
            client = mlflow.MlflowClient()
            client.set_model_version_tag(POLICY_MODEL, current.version, DIGEST_TAG, digest)
            if profile:
                client.set_model_version_tag(POLICY_MODEL, current.version, PROFILE_TAG, profile)
            return current.version
    return register_candidate(model_dir, tracker, digest, profile)


def _parent_of(run_id: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId")
    except MlflowException:
        return None


def resolve_model_ref(ref: str) -> Path:
    """`champion`/`candidate` (aliases of alignflow-policy), `models:/name@alias|/version`, or a path."""
    if ref in (CHAMPION, CANDIDATE):
        mv = get_alias(ref)
        if mv is None:
            raise LookupError(f"{POLICY_MODEL} has no '{ref}' alias in the registry "
                              f"(run the pipeline first, or pass a model directory)")
        return download_version(mv.version)
    if ref.startswith("models:/"):
        import mlflow

        dst = tempfile.mkdtemp(prefix="alignflow-model-")
        return find_model_dir(Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=dst)))
    path = Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"{ref}: not a registry alias (champion, candidate), a models:/ URI or a directory")
    return path
