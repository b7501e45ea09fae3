"""dvc.yaml -> stage graph: the same edges DVC itself computes, and clear errors."""

from __future__ import annotations

import pytest
import yaml

from alignflow import STAGES
from alignflow.orchestration.dvc_graph import DvcGraphError, load_pipeline, parse_stages, build_upstream, Pipeline
from tests.conftest import ROOT


def pipeline_of(doc: dict) -> Pipeline:
    stages = parse_stages(doc)
    return Pipeline(stages, build_upstream(stages))


def test_project_graph_matches_dvc():
    from dvc.repo import Repo

    pipeline = load_pipeline(ROOT / "dvc.yaml")
    assert pipeline.names == list(STAGES)
    with Repo(str(ROOT)) as repo:
        # DVC's edge u -> v means "u depends on v".
        dvc_edges = {(v.addressing, u.addressing) for u, v in repo.index.graph.edges()}
    assert pipeline.edges() == dvc_edges
    order = pipeline.order()
    assert all(order.index(up) < order.index(down) for up, down in pipeline.edges())
    assert pipeline.roots() == ["collect"] and pipeline.leaves() == ["eval"]
    assert pipeline.stages["sft"].cmd == "python -m components.sft"


def test_directory_outputs_metrics_and_wdir():
    pipeline = pipeline_of({"stages": {
        "make": {"cmd": ["mkdir -p out/a", "touch out/a/x"], "outs": ["out/a"], "metrics": [{"m.json": {"cache": False}}]},
        "inside": {"cmd": "cat x", "wdir": "out", "deps": ["a/x"], "outs": ["b"]},  # a file inside a dir out
        "parent": {"cmd": "ls", "deps": ["out"], "outs": ["c"]},                    # a dir containing outs
        "metric_reader": {"cmd": "cat m.json", "deps": ["m.json"], "outs": ["d"]},
        "alone": {"cmd": "true", "deps": ["elsewhere"], "outs": ["e"]},
    }})
    assert pipeline.stages["make"].cmd == "mkdir -p out/a && touch out/a/x"
    assert pipeline.stages["inside"].outs == ("out/b",)
    assert pipeline.upstream == {
        "make": frozenset(), "inside": {"make"}, "parent": {"make", "inside"},
        "metric_reader": {"make"}, "alone": frozenset(),
    }
    assert set(pipeline.roots()) == {"make", "alone"}


def test_select_requires_upstream_stages():
    pipeline = load_pipeline(ROOT / "dvc.yaml")
    sub = pipeline.select(["clean", "synthesize", "collect"])
    assert sub.names == ["collect", "synthesize", "clean"]
    assert sub.edges() == {("collect", "synthesize"), ("collect", "clean"), ("synthesize", "clean")}
    with pytest.raises(DvcGraphError, match="clean needs synthesize"):
        pipeline.select(["collect", "clean"])
    with pytest.raises(DvcGraphError, match="sft needs clean, collect, format, synthesize"):
        pipeline.select(["sft"])
    with pytest.raises(DvcGraphError, match="not in dvc.yaml: \\['nope'\\]"):
        pipeline.select(["nope"])
    assert pipeline.select([]).names == []


@pytest.mark.parametrize("doc, message", [
    ({"stages": {"a": {"cmd": "x", "deps": ["b.txt"], "outs": ["a.txt"]},
                 "b": {"cmd": "y", "deps": ["a.txt"], "outs": ["b.txt"]}}}, "cycle"),
    ({"stages": {"a": {"cmd": "x", "outs": ["d"]}, "b": {"cmd": "y", "outs": ["d/e"]}}}, "outputs overlap"),
    ({"stages": {"a": {"foreach": [1, 2], "do": {"cmd": "x"}}}}, "foreach/matrix"),
    ({"stages": {"a": {"deps": ["x"]}}}, "stages.a: no cmd"),
    ({"stages": {"a": {"cmd": "x", "outs": [{"p": {}, "q": {}}]}}}, "stages.a.outs"),
    ({"plots": []}, "no `stages`"),
])
def test_bad_dvc_yaml(doc, message):
    with pytest.raises(DvcGraphError, match=message):
        pipeline_of(doc)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "dvc.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(DvcGraphError, match="dvc.yaml: not valid YAML"):
        load_pipeline(bad)
    with pytest.raises(DvcGraphError, match="cannot read"):
        load_pipeline(tmp_path / "missing.yaml")
    bad.write_text(yaml.safe_dump({"stages": {"a": "echo"}}))
    with pytest.raises(DvcGraphError, match="stages.a: expected a mapping"):
        load_pipeline(bad)
