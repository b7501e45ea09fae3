"""PPO's reward model, loaded once (see ppo.py): a second LoRA adapter on the policy's own base when
the reward model is a LoRA on the same weights (`SharedBaseReward`), else a model of its own
(`SeparateReward`); `load_ppo_reward` picks one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignflow.rlhf.ppo_rollout import Messages

log = logging.getLogger(__name__)


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
