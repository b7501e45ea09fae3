"""params.yaml schema: wrong keys, types and values fail with the dotted key and what is allowed."""

import re
from pathlib import Path

import pytest
import yaml

from alignflow.config import ParamsError, deep_merge, flatten, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_and_smoke_profile_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.model.base.startswith("embedded:")
    smoke = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load((ROOT / "profiles/smoke.yaml").read_text()))
    from alignflow.config import validate

    assert validate(smoke).profile == "smoke"


def test_unknown_key_names_dotted_path_and_allowed_keys(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"ray": {"num_wrokers": 2}}))
    msg = str(err.value)
    assert "ray.num_wrokers" in msg and "unknown key" in msg and "num_workers" in msg


def test_wrong_type_and_value(tmp_path):
    with pytest.raises(ParamsError, match=r"ray\.num_workers"):
        load_params(write(tmp_path, {"ray": {"num_workers": "many"}}))
    with pytest.raises(ParamsError, match=r"ray\.num_workers"):
        load_params(write(tmp_path, {"ray": {"num_workers": -1}}))
    with pytest.raises(ParamsError, match=r"model\.dtype.*'float8'"):
        load_params(write(tmp_path, {"model": {"dtype": "float8"}}))
    with pytest.raises(ParamsError, match=r"align\.dpo.*2 weights for 1 loss types"):
        load_params(write(tmp_path, {"align": {"dpo": {"loss_weights": [1.0, 0.5]}}}))
    dpo = load_params(write(tmp_path, {"align": {"dpo": {"loss_type": "ipo"}}})).align.dpo
    assert dpo.loss_type == ["ipo"]  # one loss may be written without a list


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="trainer: unknown key; allowed here: .*align"):
        load_params(write(tmp_path, {"trainer": {}}))


def test_overrides_and_bad_yaml(tmp_path):
    path = write(tmp_path, {"seed": 1})
    assert load_params(path, {"seed": 7, "ray.num_workers": 2}).ray.num_workers == 2
    path.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_duplicate_key_in_params_is_rejected_with_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `model:` section would silently replace the first."""
    path = tmp_path / "params.yaml"
    path.write_text("model:\n  base: tiny:llama\nseed: 1\nmodel:\n  dtype: float32\n")
    with pytest.raises(ParamsError, match=re.escape(f"{path}:4: duplicate key 'model' (first at line 1)")):
        load_params(path)
    path.write_text("seed: 1\nformat:\n  max_length: 256\n  system_prompt: null\n  max_length: 512\n")
    with pytest.raises(ParamsError, match=re.escape(f"{path}:5: duplicate key 'max_length' (first at line 3)")):
        load_params(path)
    # a merge key is not a duplicate: `<<: *base` then an override is what anchors are for
    from alignflow.io import read_yaml

    path.write_text("base: &b {num_workers: 1, use_gpu: false}\nray:\n  <<: *b\n  num_workers: 2\n")
    assert read_yaml(path)["ray"] == {"num_workers": 2, "use_gpu": False}


def test_flatten_uses_dotted_keys_and_list_indices():
    assert flatten({"a": {"b": 1, "c": [{"d": 2}], "e": [1, 2]}}) == {"a.b": 1, "a.c.0.d": 2, "a.e": [1, 2]}


def test_every_dvc_param_exists_in_params_yaml():
    """DVC refuses to run a stage whose `params:` key is missing from params.yaml."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for dotted in stage.get("params", []):
            node = raw
            for part in dotted.split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml stage {name}: params.yaml has no {dotted}"
                node = node[part]
