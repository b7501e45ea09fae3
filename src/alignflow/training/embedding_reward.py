"""reward stage, `reward.backbone: embedding`: a linear Bradley–Terry head on frozen sentence
embeddings (models/embedding_reward.py).

Every pair is embedded once (the encoder never trains), then w minimises the same loss as
the LM reward model, −log σ(w·(f_chosen − f_rejected) − margin) (margins only with
`reward.embedding.use_margin`), plus an L2 penalty (`reward.embedding.l2`), by L-BFGS: convex,
so it converges in a few dozen iterations and the result does not depend on a learning rate or a step budget. Written like the LM path's outputs:
models/reward/, plots/reward_loss.csv and plots/reward_eval.csv (per L-BFGS round, with the
seconds since the stage started, embedding included), metrics with `eval_accuracy` on the
validation pairs, and per origin (`eval_accuracy_human`, `eval_accuracy_judge`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignflow import scratch
from alignflow.config import Params
from alignflow.io import InputError, read_jsonl
from alignflow.models.embedding_reward import EmbeddingRewardModel
from alignflow.rlhf.judges import pair_side
from alignflow.training import common

log = logging.getLogger(__name__)


def bt_loss(weight, diff, margin, l2: float):
    """Mean Bradley–Terry loss of score differences diff @ w (torch), + l2/2 · ‖w‖²."""
    import torch

    return torch.nn.functional.softplus(-(diff @ weight - margin)).mean() + 0.5 * l2 * weight.square().sum()


def fit_bradley_terry(diff: np.ndarray, margin: np.ndarray | None = None, l2: float = 0.01, rounds: int = 10,
                      iters_per_round: int = 10, on_round=None) -> np.ndarray:
    """w for features diff = f(chosen) − f(rejected), (n, d), by L-BFGS; `on_round(i, w, loss)`
    after every `iters_per_round` iterations (the curve)."""
    import torch

    x = torch.as_tensor(diff, dtype=torch.float64)
    m = torch.as_tensor(margin if margin is not None else np.zeros(len(diff)), dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters_per_round, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = bt_loss(w, x, m, l2)
        loss.backward()
        return loss

    for i in range(1, rounds + 1):
        loss = float(opt.step(closure).detach())
        if on_round is not None:
            on_round(i, w.detach().numpy().astype(np.float32), loss)
    return w.detach().numpy().astype(np.float32)


def accuracy(scores_chosen: np.ndarray, scores_rejected: np.ndarray) -> float:
    """Share of pairs ranked right; ties count half (the LM path's eval_accuracy)."""
    gap = np.asarray(scores_chosen) - np.asarray(scores_rejected)
    return float(np.mean(np.where(gap == 0, 0.5, gap > 0))) if gap.size else float("nan")


def accuracy_by_origin(scores_chosen: np.ndarray, scores_rejected: np.ndarray, origins: list[str]) -> dict[str, float]:
    """eval_accuracy_{human,judge} (origins: rank.pair_source): a reward model can rank one kind of
    pair and not the other."""
    origins_arr = np.asarray(origins)
    return {f"eval_accuracy_{o}": round(accuracy(scores_chosen[origins_arr == o], scores_rejected[origins_arr == o]), 4)
            for o in sorted(set(origins))}


def _load(path: Path | None, use_margin: bool) -> tuple[list[dict], np.ndarray | None, list[str]]:
    from alignflow.rlhf.rank import pair_source
    from alignflow.training.reward import preference_rows

    if path is None:
        return [], None, []
    records = [{**rec, "_where": f"{path}:{i}"} for i, rec in enumerate(read_jsonl(path), 1)]
    rows = preference_rows(records, use_margin)
    margin = np.array([r["margin"] for r in rows], float) if rows and "margin" in rows[0] else None
    return rows, margin, [pair_source(rec) for rec in records]


def run(params: Params, tracker, train_file: Path, val_file: Path | None, output: Path, curve: Path,
        eval_curve: Path) -> dict[str, Any]:
    cfg = params.reward
    started = time.perf_counter()
    train, margin, _ = _load(train_file, cfg.embedding.use_margin)
    val, _, val_origins = _load(val_file, False)
    if cfg.max_train_samples:
        train, margin = train[: cfg.max_train_samples], (margin[: cfg.max_train_samples] if margin is not None else None)
    if not train:
        raise InputError(f"{train_file}: no preference pairs to train the reward model on")
    rm = EmbeddingRewardModel(cfg.embedding.encoder, cfg.embedding.max_seq_length, batch_size=cfg.embedding.batch_size)

    def features(rows):
        return rm.features(*pair_side(rows, "chosen")), rm.features(*pair_side(rows, "rejected"))

    log.info("reward (embedding): embedding %d train + %d val pairs", len(train), len(val))
    fc, fr = features(train)
    vc, vr = features(val) if val else (None, None)
    embed_s = time.perf_counter() - started
    history: list[dict] = []

    def on_round(i: int, w: np.ndarray, loss: float) -> None:
        row = {"step": i, "loss": loss, "train_accuracy": accuracy(fc @ w, fr @ w),
               "elapsed_s": round(time.perf_counter() - started, 2)}  # embedding included: the stage's cost
        if vc is not None:
            gap = (vc - vr) @ w
            row["eval_accuracy"] = accuracy(vc @ w, vr @ w)
            row["eval_loss"] = float(np.mean(np.logaddexp(0.0, -gap)))  # the BT loss, unpenalised
        history.append(row)

    rm.weight = fit_bradley_terry(fc - fr, margin, cfg.embedding.l2, on_round=on_round)
    staging = scratch.staging_dir(output)
    rm.save(staging, {"base": None, "pairs": len(train), "l2": cfg.embedding.l2})
    common.promote(staging, output)
    common.write_curve(curve, history, {"train_loss": "loss"})
    common.write_curve(eval_curve, history, {"eval_loss": "eval_loss", "eval_accuracy": "eval_accuracy",
                                             "elapsed_s": "elapsed_s"})
    last = history[-1]
    metrics: dict[str, Any] = {
        "train_pairs": len(train), "eval_pairs": len(val), "train_loss": round(last["loss"], 4),
        "train_accuracy": round(last["train_accuracy"], 4), "embed_s": round(embed_s, 1),
        "fit_s": round(time.perf_counter() - started - embed_s, 1),
        "pairs_per_s": round(len(train) / max(time.perf_counter() - started, 1e-9), 2),
    }
    if "eval_accuracy" in last:
        metrics["eval_accuracy"] = round(last["eval_accuracy"], 4)
        metrics.update(accuracy_by_origin(vc @ rm.weight, vr @ rm.weight, val_origins))
        metrics.update({f"eval_pairs_{o}": val_origins.count(o) for o in sorted(set(val_origins))})
    if tracker is not None:
        tracker.set_tags({"reward.backbone": "embedding"})
        tracker.log_artifact(curve)
        tracker.log_artifact(eval_curve)
        metrics.update(common.log_and_register(params, tracker, output, "reward", task="text-classification"))
    log.info("reward (embedding): train accuracy %.3f, val %s, %.0f s", last["train_accuracy"],
             metrics.get("eval_accuracy"), time.perf_counter() - started)
    return metrics
