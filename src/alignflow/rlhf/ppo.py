"""PPO for RLHF, our own (TRL removed its PPOTrainer upstream in 2026).

Faithful to InstructGPT (Ouyang et al. 2022) and "The N Implementation Details of RLHF with PPO"
(Huang et al. 2024); the math lives in core_algos.py, this file wires models and data:

- one LoRA-adapted base holds the policy (LM head) and the value head (a linear layer on the
  same last hidden state): one forward gives log-probs and values;
- the frozen reference is the same base with the adapter disabled (no second copy);
- the reward model is loaded once: a second LoRA adapter on the same base when it is a LoRA on
  the same weights (scored with that adapter switched on), else a separate model;
- rollout: sample responses at temperature T (the log-probs of old policy and reference use
  logits / T too, as the N details advise), score them with the reward model at the last token,
  penalise responses without EOS, subtract β·KL per token (adaptive β, Ziegler et al.), GAE,
  whitened advantages;
- several PPO epochs of shuffled mini-batches per rollout, clipped policy and value losses
  (optional dual clip, `align.ppo.dual_clip_c`), gradients clipped to `grad_clip`;
- a NaN/inf reward, loss or gradient norm stops the run with the quantity and the step, before
  the optimizer step and so before any checkpoint (align_common.check_finite);
- data-parallel under Ray Train: each worker rolls out its shard of prompts, gradients are
  all-reduced (LoRA + value head are small) and the KL statistic is averaged so every worker
  keeps the same β.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignflow.rlhf import core_algos as ca
from alignflow.rlhf.align_common import check_finite
from alignflow.rlhf.generation import eos_token_ids, left_pad

log = logging.getLogger(__name__)

Messages = list[dict]
# reward_fn(prompts, response_texts, response_ids=...) -> scores (one per response)
RewardFn = Callable[..., list[float]]
VALUE_HEAD_FILE = "value_head.safetensors"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def make_value_head(model) -> nn.Linear:
    """A scalar head on the policy's last hidden state, zero-initialised (initial values 0)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = nn.Linear(config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head.to(next(model.parameters()).device)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() used them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_forward(model, value_head: nn.Module | None, input_ids, attention_mask, context_len: int, temperature: float):
    """(log-probs of the response tokens, values, logits) from one forward of the shared base."""
    response_len = input_ids.shape[1] - context_len
    # Logits only where a response token is predicted: the LM head over the vocabulary is the
    # costliest layer of a small model, and the prompt positions need none.
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
                output_hidden_states=value_head is not None, use_cache=False, logits_to_keep=response_len + 1)
    logits = out.logits[:, -(response_len + 1) : -1].float() / temperature
    logprobs = ca.logprobs_from_logits(logits, input_ids[:, context_len:])
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, context_len - 1 : -1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logprobs, values, logits


class SharedBaseReward:
    """A LoRA reward model applied as a second adapter ("reward") on the policy's PeftModel.

    Works when the reward adapter was trained on the same base weights the policy adapter sits on:
    its LoRA weights go into the shared layers; its classification head is a separate linear.
    """

    adapter_name = "reward"

    def __init__(self, peft_model, tokenizer, reward_dir: str | os.PathLike, batch_size: int = 8):
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        reward_dir = Path(reward_dir)
        cfg = json.loads((reward_dir / "adapter_config.json").read_text())
        weights = load_file(str(reward_dir / "adapter_model.safetensors"))
        lora = {k: v for k, v in weights.items() if "lora_" in k}
        head = {k: v for k, v in weights.items() if "lora_" not in k and k.split(".")[-2] in ("score", "classifier")}
        if not lora or not head:
            raise ValueError(f"{reward_dir}: not a LoRA sequence-classification adapter (no LoRA or no score head)")
        config = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0, bias="none",
                            target_modules=cfg["target_modules"], task_type="CAUSAL_LM",
                            use_rslora=cfg.get("use_rslora", False))
        peft_model.add_adapter(self.adapter_name, config)
        # Saved keys carry no adapter name; the classifier's wrapper prefix differs between task types.
        result = set_peft_model_state_dict(peft_model, lora, adapter_name=self.adapter_name)
        missing = [k for k in getattr(result, "missing_keys", []) if f".{self.adapter_name}." in k and "lora_" in k]
        if missing:
            raise ValueError(f"{reward_dir}: reward adapter does not fit the policy base ({len(missing)} LoRA weights missing)")
        w = next(v for k, v in head.items() if k.endswith("weight"))
        b = next((v for k, v in head.items() if k.endswith("bias")), None)
        self.head = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            self.head.weight.copy_(w)
            if b is not None:
                self.head.bias.copy_(b)
        device = next(peft_model.parameters()).device
        self.head.to(device).requires_grad_(False)
        for name, param in peft_model.named_parameters():
            if f".{self.adapter_name}." in name:
                param.requires_grad_(False)  # frozen: only the policy adapter and value head train
        self.peft_model, self.tokenizer, self.batch_size = peft_model, tokenizer, batch_size
        self.pad_id = tokenizer.pad_token_id
        self.active = peft_model.active_adapter

    @torch.no_grad()
    def __call__(self, prompts: list[Messages], responses: list[str], **_: Any) -> list[float]:
        texts = [self.tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
                 for p, r in zip(prompts, responses)]
        transformer = self.peft_model.get_base_model().get_decoder()
        device = self.head.weight.device
        scores: list[float] = []
        self.peft_model.set_adapter(self.adapter_name)
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=False, padding_side="right").to(device)
                hidden = transformer(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                # Pool like *ForSequenceClassification: the last token that is not padding.
                ids = enc["input_ids"]
                idx = torch.arange(ids.shape[1], device=device)
                last = (idx * (ids != self.pad_id)).argmax(-1)
                pooled = hidden[torch.arange(ids.shape[0], device=device), last]
                scores += self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float().tolist()
        finally:
            self.peft_model.set_adapter(self.active)  # back to the policy adapter (and its trainable flags)
        return scores

    def detach(self) -> None:
        """Remove the reward adapter (before saving the policy)."""
        self.peft_model.delete_adapter(self.adapter_name)


class SeparateReward:
    """A reward model of its own (different base, or full weights)."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.model.requires_grad_(False)

    def __call__(self, prompts: list[Messages], responses: list[str], **_: Any) -> list[float]:
        from alignflow.rlhf.judges import score_with_reward_model

        return score_with_reward_model(self.model, self.tokenizer, prompts, responses, self.batch_size)

    def detach(self) -> None:
        pass


def can_share_base(reward_dir: str | os.PathLike, policy_base_dir: str) -> bool:
    """True when the reward model is a LoRA adapter on exactly the weights the policy adapter sits on."""
    from alignflow.models import read_meta, resolve_spec
    from alignflow.models.specs import resolve_base_ref

    reward_dir = Path(reward_dir)
    meta = read_meta(reward_dir) or {}
    if not meta.get("adapter") or not meta.get("base") or not (reward_dir / "adapter_config.json").exists():
        return False
    try:
        reward_base = resolve_spec(resolve_base_ref(meta["base"], reward_dir))
    except Exception:
        return False
    return Path(reward_base).resolve() == Path(policy_base_dir).resolve()


def load_ppo_reward(peft_model, tokenizer, reward_dir: str, policy_base_dir: str, share: bool = True):
    if share and can_share_base(reward_dir, policy_base_dir):
        log.info("PPO reward model: a second LoRA adapter on the policy's base (%s)", reward_dir)
        return SharedBaseReward(peft_model, tokenizer, reward_dir)
    from alignflow.models import load_reward_model

    log.info("PPO reward model: a separate model (%s)", reward_dir)
    model, rtok = load_reward_model(reward_dir, device=str(next(peft_model.parameters()).device))
    return SeparateReward(model, rtok)


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + R) left-padded prompt, then the response
    attention_mask: torch.Tensor  # 1 on prompt tokens and response tokens up to and including EOS
    response_mask: torch.Tensor  # (B, R)
    context_len: int  # P
    contains_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, R) old policy
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) reward model, after the missing-EOS penalty
    raw_scores: torch.Tensor
    entropy: torch.Tensor  # (B, R)
    responses: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask up to and including the first EOS, contains_eos) for generated ids (B, R)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # an EOS strictly earlier in the row
    return (~seen_before).long(), is_eos.any(-1)


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

    # -- rollout --
    @torch.no_grad()
    def rollout(self, prompts: list[Messages]) -> Rollout:
        from alignflow.rlhf.generation import encode_prompts

        cfg = self.cfg
        encoded = encode_prompts(self.tokenizer, prompts, self.max_prompt_length)
        prompt_ids, prompt_mask = left_pad(encoded, self.pad_id)
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        torch.manual_seed(self.seed * 100003 + self.step)
        out = self.model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.max_new_tokens, do_sample=True,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            use_cache=True,
        )
        context_len = prompt_ids.shape[1]
        response_ids = out[:, context_len:]
        response_mask, contains_eos = response_mask_from_ids(response_ids, self.eos_ids)
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)

        logprobs, values, logits = self._policy_and_values(input_ids, attention_mask, context_len)
        entropy = ca.entropy_from_logits(logits)
        del logits
        ref_logprobs = self._ref_logprobs(input_ids, attention_mask, context_len)

        texts, ids_list = [], []
        for row, mask in zip(response_ids, response_mask):
            ids = [t for t, m in zip(row.tolist(), mask.tolist()) if m and t not in self.eos_ids]
            ids_list.append(ids)
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        raw = torch.tensor(self.reward_fn(prompts, texts, response_ids=ids_list), dtype=torch.float32, device=self.device)
        check_finite(f"PPO step {self.step + 1}: reward model", reward=raw)
        scores = ca.apply_missing_eos_penalty(raw, contains_eos, cfg.missing_eos_penalty)
        return Rollout(input_ids, attention_mask, response_mask, context_len, contains_eos, logprobs, ref_logprobs,
                       values, scores, raw, entropy, texts)

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


# ---------------------------------------------------------------------------------------------
# The stage's training loop (runs on every Ray Train worker)
# ---------------------------------------------------------------------------------------------


def prompts_for_step(prompts: list, step: int, batch: int, seed: int) -> list:
    """The rollout prompts of a step: a function of (seed, step) only, so a resumed run continues the same way."""
    rng = random.Random(seed * 1_000_003 + step)
    if batch <= len(prompts):
        return rng.sample(prompts, batch)
    return [rng.choice(prompts) for _ in range(batch)]


def build_policy(base_dir: str, params, device: str | None = None):
    """(PeftModel with a fresh LoRA on the SFT weights, tokenizer, value head)."""
    from peft import LoraConfig, get_peft_model

    from alignflow.models import load_causal_lm

    base, tokenizer = load_causal_lm(base_dir, dtype=params.model.dtype, device=device,
                                     trust_remote_code=params.model.trust_remote_code)
    lora = params.align.lora
    model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM", bias="none"))
    return model, tokenizer, make_value_head(model)


def ppo_train_loop(config: dict) -> dict[str, Any]:
    from alignflow.config import validate
    from alignflow.models import save_model_dir
    from alignflow.rlhf.align_common import MetricsLogger, report_checkpoint
    from alignflow.rlhf.sample import load_prompts
    from alignflow.training.launcher import LOOP_DIR_KEY, is_rank_zero, report_final, resume_checkpoint, world

    params = validate(config["params"], "loop config")
    align = params.align
    rank, world_size = world()
    torch.manual_seed(params.seed)  # the same LoRA init on every worker; sampling seeds differ per rank below
    model, tokenizer, value_head = build_policy(config["policy_base_dir"], params)
    reward = load_ppo_reward(model, tokenizer, config["reward_dir"], config["policy_base_dir"], align.ppo.share_reward_base)
    prompts = [p["prompt"] for p in load_prompts(config["prompts_file"], align.max_prompts)][rank::world_size]
    if not prompts:
        raise ValueError(f"PPO: worker {rank} got no prompts (fewer prompts than workers)")
    trainer = PPOTrainer(model, tokenizer, value_head, reward, align.ppo, learning_rate=align.learning_rate,
                         max_new_tokens=align.max_new_tokens, max_prompt_length=align.max_prompt_length,
                         seed=params.seed + rank)
    run_dir = config[LOOP_DIR_KEY]
    resume = resume_checkpoint(run_dir)
    if resume:
        trainer.load_checkpoint(resume)
        log.info("PPO: resumed from %s (step %d)", resume, trainer.step)
    resumed_step = trainer.step
    logger = MetricsLogger(is_rank_zero())
    if resume:
        logger.replay(json.loads((Path(resume) / "trainer_state.json").read_text()).get("log_history", []))
    started = time.perf_counter()
    while trainer.step < align.max_steps:
        chunk = prompts_for_step(prompts, trainer.step, align.ppo.rollout_batch_size, params.seed + rank)
        stats = trainer.train_step(chunk)
        logger.log(stats, trainer.step)
        if trainer.step % align.save_steps == 0 or trainer.step == align.max_steps:
            report_checkpoint(trainer.save_checkpoint(run_dir, logger.history) if is_rank_zero() else None, stats)
    logger.close()
    elapsed = time.perf_counter() - started
    history = logger.history
    last = history[-1] if history else {}
    first = history[0] if history else {}
    metrics = {
        "method": "ppo",
        "steps": trainer.step,
        "resumed_from_step": resumed_step,
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "kl_last": last.get("kl"),
        "kl_coef_last": trainer.kl_ctl.value,
        "entropy_last": last.get("entropy"),
        "response_length_last": last.get("response_length"),
        "s_per_step": round(elapsed / max(1, trainer.step - resumed_step), 3),
        "reward_model_shared_base": isinstance(reward, SharedBaseReward),
        "workers": world_size,
    }
    if is_rank_zero():
        reward.detach()
        save_model_dir(model, tokenizer, config["staging_dir"], config["meta"])
        from safetensors.torch import save_file

        save_file(value_head.state_dict(), str(Path(config["staging_dir"]) / VALUE_HEAD_FILE))
        metrics["history"] = history
    report_final({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics
