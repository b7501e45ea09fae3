"""dvc.yaml as a graph of stages: the single source of truth for the Airflow DAG's shape.

A stage depends on another when one of its `deps` is (inside, or contains) one of the other's
outputs (`outs`, `metrics`, `plots`), the same rule DVC applies, so `dvc repro` and the
Airflow DAG cannot disagree about the order. Pure: reads YAML, imports neither DVC nor Airflow.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class DvcGraphError(ValueError):
    """dvc.yaml cannot be turned into a DAG (unsupported construct, cycle, bad selection)."""


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs + metrics + plots: everything the stage writes
    params: tuple[str, ...] = ()


@dataclass
class Pipeline:
    stages: dict[str, Stage]  # in dvc.yaml order
    upstream: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    def edges(self) -> set[tuple[str, str]]:
        return {(up, name) for name, ups in self.upstream.items() for up in ups}

    def order(self) -> list[str]:
        return topological_order(self.upstream, self.names)

    def roots(self) -> list[str]:
        return [n for n in self.names if not self.upstream[n]]

    def leaves(self) -> list[str]:
        used = {up for ups in self.upstream.values() for up in ups}
        return [n for n in self.names if n not in used]

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.upstream[name])
        while todo:
            up = todo.pop()
            if up not in seen:
                seen.add(up)
                todo.extend(self.upstream[up])
        return seen

    def select(self, names: Iterable[str]) -> "Pipeline":
        """The sub-pipeline of `names`, which must include every stage they depend on:
        each task runs `dvc repro --single-item`, which does not build missing inputs."""
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.stages]
        if unknown:
            raise DvcGraphError(f"stages not in dvc.yaml: {unknown}; dvc.yaml has {self.names}")
        missing = {n: sorted(self.ancestors(n) - set(wanted)) for n in wanted}
        missing = {n: m for n, m in missing.items() if m}
        if missing:
            detail = "; ".join(f"{n} needs {', '.join(m)}" for n, m in missing.items())
            raise DvcGraphError(f"stage selection is missing upstream stages: {detail}")
        keep = [n for n in self.names if n in wanted]
        return Pipeline({n: self.stages[n] for n in keep}, {n: self.upstream[n] for n in keep})


def _norm(path: str, wdir: str) -> str:
    return posixpath.normpath(posixpath.join(wdir, path))


def _paths(entries: list | None, where: str) -> list[str]:
    """`- path` or `- path: {options}` entries (DVC's two spellings)."""
    out = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, dict) and len(entry) == 1:
            out.append(next(iter(entry)))
        else:
            raise DvcGraphError(f"{where}: expected a path or {{path: options}}, got {entry!r}")
    return out


def _params(entries: list | None) -> list[str]:
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, dict):  # {params_file: [keys]}
            for keys in entry.values():
                out.extend(keys or [])
        else:
            out.append(str(entry))
    return out


def overlaps(a: str, b: str) -> bool:
    """Same path, or one inside the other (directory outputs)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def parse_stages(doc: dict, source: str = "dvc.yaml") -> dict[str, Stage]:
    raw = (doc or {}).get("stages")
    if not isinstance(raw, dict) or not raw:
        raise DvcGraphError(f"{source}: no `stages` mapping")
    stages = {}
    for name, spec in raw.items():
        where = f"{source}: stages.{name}"
        if not isinstance(spec, dict):
            raise DvcGraphError(f"{where}: expected a mapping")
        if "foreach" in spec or "matrix" in spec:
            raise DvcGraphError(f"{where}: foreach/matrix stages are not supported by the DAG builder")
        cmd = spec.get("cmd")
        if isinstance(cmd, list):
            cmd = " && ".join(cmd)
        if not cmd:
            raise DvcGraphError(f"{where}: no cmd")
        wdir = spec.get("wdir", ".")
        outs = [
            _norm(p, wdir)
            for key in ("outs", "metrics", "plots")
            for p in _paths(spec.get(key), f"{where}.{key}")
        ]
        deps = [_norm(p, wdir) for p in _paths(spec.get("deps"), f"{where}.deps")]
        stages[name] = Stage(name, cmd, tuple(deps), tuple(outs), tuple(_params(spec.get("params"))))
    return stages


def build_upstream(stages: dict[str, Stage]) -> dict[str, frozenset[str]]:
    producers: list[tuple[str, str]] = []
    for stage in stages.values():
        for out in stage.outs:
            for other, other_out in producers:
                if overlaps(out, other_out):
                    raise DvcGraphError(f"outputs overlap: {stage.name} writes {out}, {other} writes {other_out}")
            producers.append((stage.name, out))
    upstream = {
        stage.name: frozenset(
            producer for dep in stage.deps for producer, out in producers
            if producer != stage.name and overlaps(dep, out)
        )
        for stage in stages.values()
    }
    topological_order(upstream, list(stages))  # raises on a cycle
    return upstream


def topological_order(upstream: dict[str, frozenset[str]], names: list[str]) -> list[str]:
    """Kahn's algorithm, ties broken by dvc.yaml order (stable, readable task order)."""
    remaining = {n: set(upstream[n]) for n in names}
    order: list[str] = []
    while remaining:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            raise DvcGraphError(f"dependency cycle among stages: {sorted(remaining)}")
        for n in ready:
            order.append(n)
            del remaining[n]
        for deps in remaining.values():
            deps.difference_update(ready)
    return order


def load_pipeline(path: str | Path = "dvc.yaml") -> Pipeline:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DvcGraphError(f"{path}: cannot read: {err}") from None
    except yaml.YAMLError as err:
        raise DvcGraphError(f"{path}: not valid YAML: {err}") from None
    stages = parse_stages(doc, str(path))
    return Pipeline(stages, build_upstream(stages))
