"""ReST / RAFT: iterated rejection sampling (Gulcehre et al. 2023; Dong et al. 2023).

Each round r = 1..R:
- Grow: K samples per training prompt from the current policy, on the sample stage's engine
  (`sample.backend`: CTranslate2 on a CPU, HF generate otherwise);
- Improve: the reward model scores them; the samples at or above the round's threshold — the
  `align.rest.quantiles[r]` quantile of this round's scores, rising round by round as ReST's
  thresholds do — become an SFT set (RAFT: only each prompt's best), and the policy's LoRA trains
  on it for `steps_per_round` steps (loss on the response only).
The policy is one LoRA on the SFT weights, trained on through the rounds. A round ends in a
checkpoint (`<run dir>/round-<r>/`: the adapter, its kept samples and its metrics), so a killed
run resumes in the round it was in. best_of_n is the zero-round case: selection, no training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DONE = "round.json"


def round_quantile(quantiles: list[float], round_index: int) -> float:
    """The quantile of round `round_index` (1-based); the last one repeats for later rounds."""
    return quantiles[min(round_index, len(quantiles)) - 1]


def threshold_at(scores: list[float], quantile: float) -> float:
    """The `quantile` of `scores` (linear interpolation, as numpy's default)."""
    ordered = sorted(scores)
    pos = quantile * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def select(prompts: list[list[dict]], responses: list[list[str]], scores: list[list[float]], threshold: float,
           best_per_prompt: bool = False) -> list[dict]:
    """Prompt-completion records of the responses scoring at or above `threshold` (RAFT: at most
    one per prompt, its best). Empty responses never train."""
    kept = []
    for prompt, texts, marks in zip(prompts, responses, scores):
        ranked = sorted(((s, t) for s, t in zip(marks, texts) if s >= threshold and t.strip()), key=lambda st: -st[0])
        for score, text in ranked[:1] if best_per_prompt else ranked:
            kept.append({"prompt": prompt, "completion": [{"role": "assistant", "content": text}], "score": score})
    return kept


def grow(policy_dir: str, prompts: list[list[dict]], params, seed: int):
    """K samples per prompt from the policy in `policy_dir` (a model dir; an adapter is merged)."""
    from alignflow.rlhf.generation import choose_backend, make_generator

    align, rest = params.align, params.align.rest
    backend = choose_backend(params.sample.backend, param="sample.backend")
    generator = make_generator(policy_dir, backend, trust_remote_code=params.model.trust_remote_code,
                               dtype=params.model.dtype, compute_type=params.model.engine_compute_type,
                               fallback=params.sample.backend == "auto", param="sample.backend")
    generations = generator.generate_with_details(
        prompts, batch_size=params.sample.batch_size, n=rest.k, max_new_tokens=align.max_new_tokens,
        temperature=rest.temperature, top_p=params.sample.top_p, seed=seed)
    return generations, generator.name


def improve(model, tokenizer, kept: list[dict], params, round_dir: Path, round_index: int):
    """SFT of the policy's adapter on the kept samples (TRL SFTTrainer, completion-only loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignflow.rlhf.align_common import finite_guard_callback
    from alignflow.rlhf.trl_methods import training_args
    from alignflow.training.launcher import prepare_hf_trainer, resume_checkpoint, train_or_restore

    align = params.align
    run_dir = str(round_dir / "trainer")
    args = training_args(align, params, run_dir, per_device_batch=align.batch_size)
    args.update(max_steps=align.rest.steps_per_round, save_steps=min(align.save_steps, align.rest.steps_per_round))
    train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in kept])
    trainer = SFTTrainer(model=model, args=SFTConfig(**args, max_length=align.max_length, completion_only_loss=True),
                         train_dataset=train, processing_class=tokenizer)
    trainer.add_callback(finite_guard_callback())
    trainer = prepare_hf_trainer(trainer, metrics_prefix=f"round{round_index}/",
                                 name=f"align rest round {round_index}/{align.rest.rounds}")
    result = train_or_restore(trainer, resume_checkpoint(run_dir))
    return trainer.model, result.training_loss


def rest_train_loop(config: dict) -> dict[str, Any]:
    from peft import PeftModel, get_peft_model

    from alignflow.config import validate
    from alignflow.io import write_jsonl
    from alignflow.models import load_causal_lm, load_reward_model, save_model_dir
    from alignflow.rlhf.align_common import MetricsLogger, check_finite
    from alignflow.rlhf.judges import score_with_reward_model
    from alignflow.rlhf.sample import load_prompts
    from alignflow.rlhf.trl_methods import lora_config
    from alignflow.training.launcher import LOOP_DIR_KEY, is_rank_zero, report_final

    params = validate(config["params"], "loop config")
    align, rest = params.align, params.align.rest
    run_dir = Path(config[LOOP_DIR_KEY])
    base_dir = config["policy_base_dir"]
    prompts = [p["prompt"] for p in load_prompts(config["prompts_file"], align.max_prompts)]
    reward_model, reward_tok = load_reward_model(config["reward_dir"], device="cpu")
    reward_model.eval().requires_grad_(False)
    base, tokenizer = load_causal_lm(base_dir, dtype=params.model.dtype, device="cpu",
                                     trust_remote_code=params.model.trust_remote_code)
    tokenizer.padding_side = "right"
    metrics_log = MetricsLogger(is_rank_zero(), total_steps=rest.rounds, name="align rest")
    model, history, started = None, [], time.perf_counter()
    policy_dir = base_dir  # round 1 grows from the SFT policy itself
    for r in range(1, rest.rounds + 1):
        round_dir = run_dir / f"round-{r}"
        done = round_dir / DONE
        if done.exists():  # finished before a kill: its adapter is the policy of the next round
            row = json.loads(done.read_text())
            metrics_log.replay([row])
            history.append(row)
            policy_dir = str(round_dir / "policy")
            continue
        if model is None:
            model = (PeftModel.from_pretrained(base, policy_dir, is_trainable=True) if policy_dir != base_dir
                     else get_peft_model(base, lora_config(align)))
        grow_started = time.perf_counter()
        generations, engine = grow(policy_dir, prompts, params, seed=params.seed + r)
        grow_s = time.perf_counter() - grow_started
        responses = [[g.text for g in gens] for gens in generations]
        flat_prompts = [p for p, texts in zip(prompts, responses) for _ in texts]
        flat = score_with_reward_model(reward_model, reward_tok, flat_prompts, [t for ts in responses for t in ts])
        check_finite(f"rest round {r}: reward model ({config['reward_dir']})", reward=flat)
        scores = [flat[i * rest.k:(i + 1) * rest.k] for i in range(len(prompts))]
        threshold = threshold_at(flat, round_quantile(rest.quantiles, r))
        kept = select(prompts, responses, scores, threshold, rest.best_per_prompt)
        if not kept:
            raise RuntimeError(f"rest round {r}: no sample scored at or above {threshold:.4g} "
                               "(every response empty?); lower align.rest.quantiles")
        round_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(round_dir / "kept.jsonl", kept)
        model, loss = improve(model, tokenizer, kept, params, round_dir, r)
        save_model_dir(model, tokenizer, round_dir / "policy", {"base": base_dir, "stage": "align", "method": "rest"})
        lengths = [g.num_tokens for gens in generations for g in gens]
        row = {"step": r, "reward": sum(flat) / len(flat), "reward_kept": sum(k["score"] for k in kept) / len(kept),
               "threshold": threshold, "kept": len(kept), "samples": len(flat), "loss": loss,
               "response_length": sum(lengths) / len(lengths), "grow_s": round(grow_s, 2)}
        log.info("rest round %d/%d: %d samples on %s (mean reward %.3f), kept %d at >= %.3f, SFT loss %.3f",
                 r, rest.rounds, len(flat), engine, row["reward"], len(kept), threshold, loss or float("nan"))
        metrics_log.log({k: v for k, v in row.items() if k != "step"}, r)
        done.write_text(json.dumps(row, sort_keys=True) + "\n")
        history.append(row)
        policy_dir = str(round_dir / "policy")
    metrics_log.close()
    if model is None:  # every round had finished: the last round's adapter is the policy
        model = PeftModel.from_pretrained(base, policy_dir)
    first, last = history[0], history[-1]
    metrics: dict[str, Any] = {
        "method": "rest", "steps": len(history), "train_examples": sum(h["kept"] for h in history),
        "reward_first": first["reward"], "reward_last": last["reward"], "threshold_last": last["threshold"],
        "response_length_first": first["response_length"], "response_length_last": last["response_length"],
        "s_per_round": round((time.perf_counter() - started) / len(history), 2),
    }
    if is_rank_zero():
        save_model_dir(model, tokenizer, config["staging_dir"], config["meta"])
        metrics["history"] = history
    report_final({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics
