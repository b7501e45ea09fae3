"""The PPO trainer (see ppo.py): rollout -> advantages -> PPO epochs of clipped updates on one
worker (gradients all-reduced across workers), and its checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from alignflow.rlhf import core_algos as ca
from alignflow.rlhf.align_common import check_finite
from alignflow.rlhf.generation import eos_token_ids
from alignflow.rlhf.ppo_rollout import (
    Messages,
    Rollout,
    decode_responses,
    policy_forward,
    position_ids_for,
    sample_responses,
)

# reward_fn(prompts, response_texts, response_ids=...) -> scores (one per response)
RewardFn = Callable[..., list[float]]


class PPOTrainer:
    """Rollout → advantages → PPO epochs, on one worker (gradients all-reduced across workers)."""

    def __init__(self, model, tokenizer, value_head: nn.Module, reward_fn: RewardFn, cfg, *, learning_rate: float,
                 max_new_tokens: int, max_prompt_length: int, seed: int = 0, grad_clip: float = 1.0,
                 ref_model=None, value_model=None):
        """`model` is a PeftModel (reference = adapter disabled, values from its hidden states) unless
        `ref_model` / `value_model` are given: the classic separate-models layout (bench/ppo_memory.py)."""
        self.model, self.tokenizer, self.value_head, self.reward_fn, self.cfg = model, tokenizer, value_head, reward_fn, cfg
        self.ref_model, self.value_model = ref_model, value_model
        self.max_new_tokens, self.max_prompt_length, self.seed = max_new_tokens, max_prompt_length, seed
        self.grad_clip = grad_clip
        self.device = next(model.parameters()).device
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.kl_ctl = ca.build_kl_controller(cfg.kl_controller, cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
        if value_model is not None:
            self.params += [p for p in value_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, eps=1e-5)
        self.policy_loss = ca.get_policy_loss(cfg.policy_loss)
        self.step = 0
        # Dropout off throughout: log-probs of rollout and update must agree.
        self.model.eval()
        for extra in (ref_model, value_model):
            if extra is not None:
                extra.eval()

    def _policy_and_values(self, input_ids, attention_mask, context_len):
        if self.value_model is None:  # shared base: one forward
            return policy_forward(self.model, self.value_head, input_ids, attention_mask, context_len, self.cfg.temperature)
        logprobs, _, logits = policy_forward(self.model, None, input_ids, attention_mask, context_len, self.cfg.temperature)
        out = self.value_model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_for(attention_mask), output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][:, context_len - 1 : -1]
        return logprobs, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float(), logits

    @torch.no_grad()
    def _ref_logprobs(self, input_ids, attention_mask, context_len):
        if self.ref_model is not None:
            return policy_forward(self.ref_model, None, input_ids, attention_mask, context_len, self.cfg.temperature)[0]
        with self.model.disable_adapter():  # the frozen reference: the same weights without the adapter
            return policy_forward(self.model, None, input_ids, attention_mask, context_len, self.cfg.temperature)[0]

    # -- distributed helpers (no-ops on one worker) --
    @staticmethod
    def _world() -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1

    def _all_mean(self, value: float) -> float:
        if self._world() == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(t)
        return (t / self._world()).item()

    def _allreduce_grads(self) -> None:
        world = self._world()
        if world == 1:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= world

    # -- rollout (sampling and forwards: ppo_rollout.py) --
    @torch.no_grad()
    def rollout(self, prompts: list[Messages]) -> Rollout:
        cfg = self.cfg
        sampled = sample_responses(
            self.model, self.tokenizer, prompts, max_prompt_length=self.max_prompt_length,
            max_new_tokens=self.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, eos_ids=self.eos_ids,
            pad_id=self.pad_id, seed=self.seed * 100003 + self.step, device=self.device,
        )
        input_ids, attention_mask, context_len = sampled.input_ids, sampled.attention_mask, sampled.context_len

        logprobs, values, logits = self._policy_and_values(input_ids, attention_mask, context_len)
        entropy = ca.entropy_from_logits(logits)
        del logits
        ref_logprobs = self._ref_logprobs(input_ids, attention_mask, context_len)

        texts, ids_list = decode_responses(self.tokenizer, sampled.response_ids, sampled.response_mask, self.eos_ids)
        raw = torch.tensor(self.reward_fn(prompts, texts, response_ids=ids_list), dtype=torch.float32, device=self.device)
        check_finite(f"PPO step {self.step + 1}: reward model", reward=raw)
        scores = ca.apply_missing_eos_penalty(raw, sampled.contains_eos, cfg.missing_eos_penalty)
        return Rollout(input_ids, attention_mask, sampled.response_mask, context_len, sampled.contains_eos, logprobs,
                       ref_logprobs, values, scores, raw, entropy, texts)

    # -- one PPO iteration --
    def train_step(self, prompts: list[Messages]) -> dict[str, float]:
        cfg = self.cfg
        started = time.perf_counter()
        ro = self.rollout(prompts)
        rollout_s = time.perf_counter() - started
        mask = ro.response_mask.float()

        rewards, kl = ca.shape_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, self.kl_ctl.value,
                                             cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = ca.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ca.compute_gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        advantages = ca.masked_whiten(advantages, mask)

        stats: dict[str, list[float]] = {}
        n = len(ro)
        order_rng = random.Random(self.seed * 7919 + self.step)
        for epoch in range(cfg.ppo_epochs):
            order = list(range(n))
            order_rng.shuffle(order)
            for start in range(0, n, cfg.mini_batch_size):
                idx = torch.tensor(order[start : start + cfg.mini_batch_size], device=self.device)
                mb_mask = mask[idx]
                logprobs, values, logits = self._policy_and_values(ro.input_ids[idx], ro.attention_mask[idx],
                                                                   ro.context_len)
                # Old log-probs: the rollout's, fixed over all epochs (recomputing them would make the ratio 1).
                pg_loss, pg_stats = self.policy_loss(ro.logprobs[idx], logprobs, advantages[idx], mb_mask, cfg.clip_range,
                                                     dual_clip_c=cfg.dual_clip_c)
                vf_loss, vf_stats = ca.clipped_value_loss(values, ro.values[idx], returns[idx], mb_mask, cfg.clip_range_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * ca.masked_mean(ca.entropy_from_logits(logits), mb_mask)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._allreduce_grads()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                check_finite(f"PPO step {self.step + 1} (epoch {epoch + 1}, mini-batch {start // cfg.mini_batch_size + 1})",
                             policy_loss=pg_loss, value_loss=vf_loss, loss=loss, grad_norm=grad_norm)
                self.optimizer.step()
                for key, value in {"loss": loss.item(), "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                                   "grad_norm": float(grad_norm), **pg_stats, **vf_stats}.items():
                    stats.setdefault(key, []).append(value)
                del logits

        seq_kl = ca.sequence_kl(kl, mask).mean().item()
        mean_kl = self._all_mean(seq_kl)
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, n * self._world())
        self.step += 1
        lengths = mask.sum(-1)
        out = {
            "reward": self._all_mean(ro.raw_scores.mean().item()),
            "reward_penalized": self._all_mean(ro.scores.mean().item()),
            "non_score_reward": self._all_mean((-kl_coef * ca.sequence_kl(kl, mask)).mean().item()),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "entropy": self._all_mean(ca.masked_mean(ro.entropy, mask).item()),
            "response_length": self._all_mean(lengths.mean().item()),
            "eos_rate": self._all_mean(ro.contains_eos.float().mean().item()),
            "value_mean": ca.masked_mean(ro.values, mask).item(),
            "return_mean": ca.masked_mean(returns, mask).item(),
            "explained_variance": ca.explained_variance(ro.values, returns, mask),
            "rollout_s": rollout_s,
            "step_s": time.perf_counter() - started,
        }
        out.update({k: sum(v) / len(v) for k, v in stats.items()})
        return out

    # -- checkpoints --
    def state_dict(self) -> dict:
        """Tensors and plain containers/numbers only: loadable with torch.load(weights_only=True)."""
        from peft import get_peft_model_state_dict

        return {
            "adapter": dict(get_peft_model_state_dict(self.model, adapter_name="default")),
            "value_head": dict(self.value_head.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": float(self.kl_ctl.value),
            "step": int(self.step),
        }

    def load_state_dict(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state["adapter"], adapter_name="default")
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.step = state["step"]

    def save_checkpoint(self, run_dir: str | os.PathLike, log_history: list[dict] | None = None) -> Path:
        """`checkpoint-<step>/`: the state, and (as HF does) the steps logged so far, so a resumed
        run's curve starts at step 1."""
        path = Path(run_dir) / f"checkpoint-{self.step}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), tmp / "ppo_state.pt")
        # Written last: resume_checkpoint takes a dir with trainer_state.json as complete.
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"global_step": self.step, "kl_coef": self.kl_ctl.value, "log_history": log_history or []}))
        if path.exists():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        # weights_only: a checkpoint is data, never code to unpickle.
        self.load_state_dict(torch.load(Path(path) / "ppo_state.pt", map_location=self.device, weights_only=True))
