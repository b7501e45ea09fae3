"""collect's DVC deps follow `collect.sources`: new data in a source re-runs the pipeline.

DVC re-runs a stage when one of its `deps` changes, but it cannot template a list of deps from
params.yaml. So the deps of `collect` in dvc.yaml are written from `collect.sources`, every
local path (a file, a directory, or a glob's directory), by `alignflow sync-deps`. `alignflow
repro` and the Airflow DAG's start task run it before DVC looks at the pipeline, and collect
refuses to run with a source that is not a dep (`check`), so a source can never change unseen.

Hub datasets (`hf:`) have no file DVC can hash: with one in the sources, collect is marked
`always_changed`, i.e. it re-reads the hub on every run; its output is deterministic, so the
stages downstream re-run only when the data really changed.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from alignflow.config import Params

STAGE = "collect"
CODE_DEPS = ("components/collect.py", "src/alignflow/data")
GLOB_CHARS = "*?["


def source_dep(path: str) -> str:
    """The path DVC tracks for a source path: itself, or for a glob the directory before the
    first wildcard ("data/new/*.jsonl" -> "data/new")."""
    parts = Path(path).as_posix().split("/")
    for i, part in enumerate(parts):
        if any(ch in part for ch in GLOB_CHARS):
            return "/".join(parts[:i]) or "."
    return posixpath.normpath(Path(path).as_posix())


def _inside(path: str, other: str) -> bool:
    return other == "." or path == other or path.startswith(other.rstrip("/") + "/")


def required_deps(params: Params) -> list[str]:
    """collect's deps for these params: its code, then every local source (outer paths only)."""
    paths = list(dict.fromkeys(source_dep(s.path) for s in params.collect.sources if s.path))
    outer = [p for p in paths if not any(q != p and _inside(p, q) for q in paths)]
    return [*CODE_DEPS, *outer]


def needs_always_changed(params: Params) -> bool:
    return any(s.hf for s in params.collect.sources)


def _collect_stage(doc):
    """dvc.yaml's collect stage, or None in a pipeline without one (nothing to keep in sync)."""
    stages = (doc or {}).get("stages") or {}
    return stages.get(STAGE)


def check(params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """What dvc.yaml's collect stage lacks for these params (empty when in sync)."""
    import yaml

    stage = _collect_stage(yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")))
    if stage is None:
        return []
    deps = [str(d) for d in stage.get("deps") or []]
    problems = [f"deps lacks {p}" for p in required_deps(params)
                if not any(_inside(p, source_dep(d)) for d in deps)]
    if needs_always_changed(params) and not stage.get("always_changed"):
        problems.append("always_changed is not set (a hub source cannot be hashed by DVC)")
    return problems


def sync(params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> bool:
    """Rewrite collect's deps (and always_changed) in dvc.yaml from the params, keeping the rest
    of the file, comments included. Returns whether the file changed."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    text = dvc_yaml.read_text(encoding="utf-8")
    doc = rt.load(text)
    stage = _collect_stage(doc)
    if stage is None:
        return False
    wanted = required_deps(params)
    current = [str(d) for d in stage.get("deps") or []]
    changed = False
    if current != wanted:
        stage["deps"] = CommentedSeq(wanted)
        changed = True
    if needs_always_changed(params) != bool(stage.get("always_changed")):
        if needs_always_changed(params):
            stage["always_changed"] = True
        else:
            del stage["always_changed"]
        changed = True
    if changed:
        import io

        buf = io.StringIO()
        rt.indent(mapping=2, sequence=4, offset=2)
        rt.dump(doc, buf)
        tmp = dvc_yaml.with_name(dvc_yaml.name + ".tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        tmp.replace(dvc_yaml)
    return changed
