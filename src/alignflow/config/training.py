"""Params of the training stages: sft (TRL SFTTrainer) and reward (TRL RewardTrainer).

Both run inside Ray Train (alignflow.training.launcher). Cross-section rules (checked at
validation, before any work): qlora needs a GPU; packing on a GPU needs flash attention (else
packed sequences attend across their boundaries or fall back to slow masked kernels);
max_length must fit the model's context where that is known without loading the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignflow.config.base import Section
from alignflow.config.common import LoraParams

FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


class TrainLoopParams(Section):
    """What both trainers share (HF TrainingArguments, CPU-sized defaults)."""

    learning_rate: float = Field(2e-4, gt=0)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(2, ge=1)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1 = num_epochs over the data")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(10, ge=1)
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (a killed run resumes there)")
    gradient_checkpointing: bool = False
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    peft: Literal["lora", "qlora", "none"] = "lora"
    lora: LoraParams = LoraParams()

    def _common_checks(self, params, max_length: int, base: str) -> list[str]:
        problems = []
        if self.peft == "qlora" and not params.ray.use_gpu:
            problems.append("peft: qlora needs a GPU (bitsandbytes 4-bit); ray.use_gpu is false — use peft: lora on CPU")
        from alignflow.models.specs import context_length

        try:
            context = context_length(base)
        except Exception:  # an unreadable base is reported by the stage itself
            context = None
        if context is not None and max_length > context:
            problems.append(f"max_length: {max_length} is above the context of {base} ({context} tokens)")
        return problems


class SFTParams(TrainLoopParams):
    max_length: int = Field(512, ge=16)
    # Loss on assistant tokens only (every assistant turn of a multi-turn chat), or on everything.
    loss_on: Literal["assistant", "all"] = "assistant"
    packing: bool = False
    # Write the adapter merged into full weights too (models/sft/merged/), e.g. for vLLM.
    merge_adapter: bool = False
    eval_on_start: bool = False

    def cross_check(self, params) -> list[str]:
        problems = self._common_checks(params, self.max_length, params.model.base)
        if self.packing and params.ray.use_gpu and params.model.attn_implementation not in FLASH_ATTENTION:
            problems.append(
                "packing: on a GPU packing needs flash attention (set model.attn_implementation: flash_attention_2) "
                "or packing: false"
            )
        return problems


class RewardParams(TrainLoopParams):
    # The model the reward head goes on: models/sft by default (falls back to model.base when absent).
    base: str = "models/sft"
    max_length: int = Field(512, ge=16)
    learning_rate: float = Field(1e-4, gt=0)
    # 0 = off; else adds c * mean((r_chosen + r_rejected)^2) so rewards stay centred on 0.
    center_rewards_coefficient: float = Field(0.0, ge=0)
    # Use the per-pair `margin` of preference records in the Bradley–Terry loss when present.
    use_margin: bool = True

    @model_validator(mode="after")
    def _base_not_empty(self) -> "RewardParams":
        if not self.base.strip():
            raise ValueError("base: must name a model (models/sft, a model spec or a path)")
        return self

    def cross_check(self, params) -> list[str]:
        from pathlib import Path

        base = params.model.base if self.base == "models/sft" and not Path(self.base).exists() else self.base
        return self._common_checks(params, self.max_length, base)
