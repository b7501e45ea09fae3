"""`alignflow repro` argument handling: -S with or without `--`, experiment names."""

from alignflow.cli import _exp_name, _split_dvc_args


def test_sets_are_taken_with_or_without_double_dash():
    assert _split_dvc_args(["--", "-S", "align.method=ppo"]) == (["align.method=ppo"], [])
    assert _split_dvc_args(["-S", "a=1", "--set=b=2", "eval"]) == (["a=1", "b=2"], ["eval"])


def test_experiment_name_is_kept_or_generated():
    assert _exp_name(["-n", "mine"]) == ("mine", ["-n", "mine"])
    name, args = _exp_name(["--force"])
    assert name and args == ["--name", name, "--force"]
