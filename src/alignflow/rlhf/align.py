"""align: align the SFT policy with `align.method` -> models/policy/, plots/align_*.csv.

- dpo / orpo / simpo / kto / grpo / rloo: TRL trainers (trl_methods.py), a fresh LoRA on the
  SFT weights (orpo and simpo need no reference model);
- ppo: ours (ppo.py), policy + value head on one LoRA-adapted base, reward model loaded once;
- rest: ours (rest.py), rounds of Grow (sample) and Improve (SFT on what the reward model keeps);
- best_of_n: no training, best-of-N selection by the reward model, recorded as a policy.
All but best_of_n run inside the Ray Train launcher (checkpoints; a re-run resumes) and log
reward, KL, entropy and response length per step (align_common.py says what each means per method):
plots/align_curve.csv has every curve column (cells a method did not log at a step are empty),
plots/align_{reward,kl}.csv the steps that logged each, which `dvc plots` draws.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alignflow import paths, scratch
from alignflow.config import Params
from alignflow.config.rlhf import NEEDS_REWARD_MODEL, OFFLINE_METHODS, PAIRWISE_METHODS
from alignflow.io import InputError

log = logging.getLogger(__name__)

OUTPUT = paths.POLICY_MODEL
CURVE = Path("plots/align_curve.csv")
# The series of the DVC figure, one file each: only the steps that logged it (no empty cell drawn as 0).
PLOTTED = {"reward": Path("plots/align_reward.csv"), "kl": Path("plots/align_kl.csv")}
SFT_DIR = paths.SFT_MODEL
PREFS_TRAIN = Path("data/prefs/train.jsonl")
PREFS_KTO = Path("data/prefs/kto.jsonl")
PROMPTS = paths.PROMPTS_TRAIN
CONSTRAINT_PROMPTS = paths.CONSTRAINT_PROMPTS_TRAIN


def _require(path: Path, what: str, stage: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: missing ({what}; written by the {stage} stage — run it first)")
    return path


def loop_config(params: Params, staging: Path) -> dict[str, Any]:
    """JSON-able config of the training loop; its digest names the Ray run (same inputs → resume)."""
    from alignflow.models import resolve_spec
    from alignflow.training import common
    from alignflow.training.launcher import LOOP_HINT_KEY

    align = params.align
    method = align.method
    _require(SFT_DIR, "the SFT policy", "sft")
    inputs = [SFT_DIR / "alignflow_model.json", SFT_DIR / "adapter_model.safetensors", SFT_DIR / "model.safetensors"]
    reward_dir = Path(align.reward_model)
    if method in NEEDS_REWARD_MODEL and align.reward != "verifier":
        _require(reward_dir, "the reward model", "reward")
        inputs += [reward_dir / "alignflow_model.json", reward_dir / "adapter_model.safetensors",
                   reward_dir / "model.safetensors"]
    if method in PAIRWISE_METHODS:
        inputs.append(_require(PREFS_TRAIN, "preference pairs", "rank"))
    elif method == "kto":
        inputs.append(_require(PREFS_KTO, "unpaired KTO examples", "rank"))
    else:
        inputs.append(_require(PROMPTS, "training prompts", "format"))
        if align.constraint_prompts:
            inputs.append(_require(CONSTRAINT_PROMPTS, "verifiable-constraint prompts", "format"))
    return {
        "params": params.model_dump(mode="json", include={"seed", "model", "ray", "align", "sample"}),
        "method": method,
        # The SFT weights with their adapter merged (a cached copy): the base of the new adapter,
        # and with that adapter disabled, the frozen reference.
        "policy_base_dir": resolve_spec(str(SFT_DIR)),
        "reward_dir": str(reward_dir.resolve()),
        "train_file": str(PREFS_TRAIN.resolve()),
        "kto_file": str(PREFS_KTO.resolve()),
        "prompts_file": str(PROMPTS.resolve()),
        "constraint_prompts_file": str(CONSTRAINT_PROMPTS.resolve()),
        "data_digest": common.file_digest(*inputs),
        "staging_dir": str(staging.resolve()),
        "meta": {"base": str(SFT_DIR), "stage": "align", "method": method, "peft": "lora"},
        LOOP_HINT_KEY: (f"align.batch_size (now {align.batch_size}; raise align.grad_accum to keep the effective "
                        f"batch), align.max_length (now {align.max_length}) or align.max_new_tokens"),
    }


def run(params: Params, tracker) -> dict[str, Any]:
    from alignflow.rlhf.align_common import CURVE_COLUMNS
    from alignflow.training import common

    method = params.align.method
    # offline methods learn from the ranked pairs, online ones sample on the training prompts
    common.log_datasets(tracker, [PREFS_TRAIN if method in OFFLINE_METHODS else PROMPTS])
    staging = scratch.staging_dir(OUTPUT)
    if method == "best_of_n":
        from alignflow.rlhf.best_of_n import run_best_of_n
        from alignflow.rlhf.sample import load_prompts

        _require(SFT_DIR, "the SFT policy", "sft")
        _require(Path(params.align.reward_model), "the reward model", "reward")
        prompts = [p["prompt"] for p in load_prompts(_require(PROMPTS, "training prompts", "format"),
                                                       params.align.max_prompts or 16)]
        metrics, history = run_best_of_n(params, staging, str(SFT_DIR), params.align.reward_model, prompts)
        for row in history:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
    else:
        from alignflow.training.launcher import run_training

        if method == "ppo":
            from alignflow.rlhf.ppo import ppo_train_loop as loop
        elif method == "rest":
            from alignflow.rlhf.rest import rest_train_loop as loop
        else:
            from alignflow.rlhf.trl_methods import trl_train_loop as loop
        config = loop_config(params, staging)
        result = run_training(loop, config, params, f"align-{method}", tracking_run_id=getattr(tracker, "run_id", None))
        metrics = dict(result.return_value or {})
        history = metrics.pop("history", [])
    common.promote(staging, OUTPUT)
    metrics["curve_points"] = common.write_curve(CURVE, history, {c: c for c in CURVE_COLUMNS}, required=())
    for column, path in PLOTTED.items():
        common.write_curve(path, history, {column: column})
    tracker.set_tags({"align.method": method})
    tracker.log_artifact(CURVE)
    metrics.update(register_policy(params, tracker, method))
    return {k: v for k, v in metrics.items() if v is not None}


def register_policy(params: Params, tracker, method: str) -> dict[str, Any]:
    """Log models/policy to MLflow and register it as alignflow-policy (alias candidate)."""
    if not params.tracking.log_models or not hasattr(tracker, "run_id"):
        return {}
    if method != "best_of_n":
        from alignflow.training import common

        return common.log_and_register(params, tracker, OUTPUT, "align", task="text-generation")
    # best_of_n has no weights of its own: its record (policy + reward model + n) is the model,
    # logged as a pyfunc that serves best-of-N.
    import mlflow

    from alignflow import tracking
    from alignflow.rlhf.best_of_n import BestOfNPyfunc

    logged = mlflow.pyfunc.log_model(name="model", python_model=BestOfNPyfunc(),
                                     artifacts={"model_dir": str(OUTPUT.resolve())}, pip_requirements=["alignflow"])
    tracker.set_tags({"alignflow.align.model_uri": logged.model_uri})
    info: dict[str, Any] = {}
    if params.tracking.register_models:
        version = tracking.register_model(logged.model_uri, "align", tags={"method": method, "kind": "best_of_n",
                                                                       "alignflow.profile": params.profile})
        info["registered_version"] = int(version.version)
    return info
