"""`make airflow`'s config patching (alignflow.orchestration.local_airflow), without Airflow."""

import configparser

from alignflow.orchestration.local_airflow import local_options, set_options

GENERATED = """[core]
# The folder where your airflow pipelines live
#
dags_folder = /root/airflow/dags
load_examples = True
# execution_api_server_url =

[api]
host = 0.0.0.0
port = 8080

[logging]
log_format = [%%(asctime)s] %%(message)s
"""


def parse(text: str) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)  # strict: duplicate keys would raise
    cfg.read_string(text)
    return cfg


def test_set_options_in_place_keeps_the_rest(tmp_path):
    options = local_options(tmp_path / "dags", "127.0.0.1", 8081)
    patched = set_options(GENERATED, options)
    cfg = parse(patched)
    assert cfg["core"]["dags_folder"] == str(tmp_path / "dags")
    assert cfg["core"]["load_examples"] == "False"
    assert cfg["core"]["parallelism"] == "4"  # absent before: added under [core]
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:8081/execution/"
    assert (cfg["api"]["host"], cfg["api"]["port"]) == ("127.0.0.1", "8081")
    assert cfg["logging"]["log_format"] == "[%%(asctime)s] %%(message)s"
    assert "# The folder where your airflow pipelines live" in patched
    assert set_options(patched, options) == patched  # idempotent


def test_set_options_new_section_and_duplicates():
    patched = set_options("[a]\nx = 1\nx = 2\n", {"a": {"x": "3"}, "b": {"y": "4"}})
    cfg = parse(patched)
    assert cfg["a"]["x"] == "3" and cfg["b"]["y"] == "4"
