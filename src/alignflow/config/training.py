"""Params of the training stages: sft (TRL SFTTrainer) and reward (TRL RewardTrainer).

Both run inside Ray Train (alignflow.training.launcher). Cross-section rules (checked at
validation, before any work): qlora needs a GPU; packing on a GPU needs flash attention (else
packed sequences attend across their boundaries or fall back to slow masked kernels);
max_length must fit the model's context where that is known without loading the model.

The PEFT method (`peft`) reads its settings from the sub-section of the same name (`sft.lora`,
`sft.adalora`, `sft.ia3`, `sft.prefix`, `sft.prompt`, `sft.ptuning`). LoRA, AdaLoRA and IA³
change weights and merge into them, so every later stage sees a plain model. Prefix, prompt and
P-tuning add learned virtual tokens at run time: nothing to merge, so the adapter loads as base +
PeftModel on the HF back end only, and what needs merged weights is rejected here (see
`SFTParams.cross_check` and `RewardParams.cross_check` for each rule and the error behind it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignflow.config.base import Section
from alignflow.config.common import (
    AdaLoraParams,
    IA3Params,
    LoraParams,
    PrefixParams,
    PromptParams,
    PTuningParams,
)

FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")
PeftMethod = Literal["lora", "qlora", "adalora", "ia3", "prefix", "prompt", "ptuning", "none"]
# Learned virtual tokens (PEFT prompt learning): no weight delta, so no merge.
PROMPT_LEARNING = ("prefix", "prompt", "ptuning")


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
    # lora | qlora (LoRA on a 4-bit base, GPU) | adalora | ia3 | prefix | prompt | ptuning (sft only) | none (full)
    peft: PeftMethod = "lora"
    lora: LoraParams = LoraParams()
    adalora: AdaLoraParams = AdaLoraParams()
    ia3: IA3Params = IA3Params()

    @property
    def virtual_tokens(self) -> int:
        """Positions the PEFT method adds in front of every sequence (prompt learning), else 0."""
        return getattr(getattr(self, self.peft, None), "num_virtual_tokens", 0) if self.peft in PROMPT_LEARNING else 0

    def _common_checks(self, params, max_length: int, base: str) -> list[str]:
        problems = []
        if self.peft == "qlora" and not params.ray.use_gpu:
            problems.append("peft: qlora needs a GPU (bitsandbytes 4-bit); ray.use_gpu is false — use peft: lora on CPU")
        if self.peft == "adalora" and self.max_steps > 0 and self.adalora.tinit + self.adalora.tfinal >= self.max_steps:
            problems.append(
                f"adalora.tinit: tinit ({self.adalora.tinit}) + tfinal ({self.adalora.tfinal}) leave no step of "
                f"max_steps ({self.max_steps}) to prune ranks in (AdaLoRA needs tinit < total steps - tfinal)"
            )
        from alignflow.models.specs import context_length

        try:
            context = context_length(base)
        except Exception:  # an unreadable base is reported by the stage itself
            context = None
        if context is not None and max_length > context:
            problems.append(f"max_length: {max_length} is above the context of {base} ({context} tokens)")
        elif context is not None and max_length + self.virtual_tokens > context:
            problems.append(
                f"{self.peft}.num_virtual_tokens: {self.virtual_tokens} virtual tokens + max_length ({max_length}) "
                f"are above the context of {base} ({context} tokens)"
            )
        return problems


class JudgeEvalParams(Section):
    """sft.judge_eval: after training, the SFT model answers held-out validation prompts
    (data/formatted/prompts_val.jsonl) and the eval's reference judge (rank.reference) scores each
    answer: a quality number to compare SFT recipes (e.g. the PEFT methods) by, without running the
    rest of the DAG. Off (max_prompts: 0) in the default recipe: eval judges SFT on the test prompts."""

    max_prompts: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(16, ge=1)
    # hf by default: prompt-learning adapters run on HF only, and one back end samples every recipe alike.
    backend: Literal["hf", "auto", "openvino", "ct2"] = "hf"


class SFTParams(TrainLoopParams):
    max_length: int = Field(512, ge=16)
    # Loss on assistant tokens only (every assistant turn of a multi-turn chat), or on everything.
    loss_on: Literal["assistant", "all"] = "assistant"
    packing: bool = False
    # Write the adapter merged into full weights too (models/sft/merged/), e.g. for vLLM.
    merge_adapter: bool = False
    eval_on_start: bool = False
    prefix: PrefixParams = PrefixParams()
    prompt: PromptParams = PromptParams()
    ptuning: PTuningParams = PTuningParams()
    judge_eval: JudgeEvalParams = JudgeEvalParams()

    def cross_check(self, params) -> list[str]:
        problems = self._common_checks(params, self.max_length, params.model.base)
        if self.packing and params.ray.use_gpu and params.model.attn_implementation not in FLASH_ATTENTION:
            problems.append(
                "packing: on a GPU packing needs flash attention (set model.attn_implementation: flash_attention_2) "
                "or packing: false"
            )
        if self.peft in PROMPT_LEARNING:
            problems += self._prompt_learning_checks(params)
        return problems

    def _prompt_learning_checks(self, params) -> list[str]:
        """What a prefix/prompt/P-tuning adapter cannot do: it has no weights to merge."""
        peft = f"sft.peft: {self.peft}"
        problems = []
        if params.align.method != "best_of_n":
            problems.append(
                f"peft: {self.peft} adds learned virtual tokens at run time, with no weights to merge, but "
                f"align.method: {params.align.method} trains a fresh LoRA on the merged SFT model (and uses it, "
                "adapter disabled, as the frozen reference); use align.method: best_of_n (samples the SFT adapter "
                "as it is) or sft.peft: lora | adalora | ia3"
            )
        if self.merge_adapter:
            problems.append(f"merge_adapter: true, but {peft} (learned virtual tokens) has no weights to merge: "
                            "set sft.merge_adapter: false")
        if self.packing:
            # PEFT warns "Position ids are not supported for parameter efficient tuning. Ignoring position ids."
            problems.append(
                f"packing: true does not work with {peft}: the virtual tokens would be prepended once per packed "
                "row, not per conversation, and PEFT ignores the position_ids that keep packed conversations "
                "apart; set sft.packing: false"
            )
        if self.peft == "prefix" and self.gradient_checkpointing:
            # transformers: "Caching is incompatible with gradient checkpointing ... Setting `cache=None`",
            # which drops the prefix (then: "The size of tensor a (70) must match the size of tensor b (78)")
            problems.append(
                f"gradient_checkpointing: true does not work with {peft}: the prefix is passed as a key/value "
                "cache, which transformers turns off under gradient checkpointing; set sft.gradient_checkpointing: false"
            )
        for name, backend in (("sample.backend", params.sample.backend), ("eval.backend", params.eval.backend),
                              ("sft.judge_eval.backend", self.judge_eval.backend)):
            if backend in ("openvino", "ct2", "vllm"):
                problems.append(
                    f"peft: {self.peft} cannot run on {name}: {backend}, which needs merged weights (the virtual "
                    f"tokens exist only in PEFT); set {name}: auto (uses hf for this model) or hf"
                )
        return problems


class EmbeddingRewardParams(Section):
    """reward.backbone: embedding: a linear Bradley–Terry head on frozen sentence embeddings."""

    encoder: str | None = Field(None, description="a sentence-transformers directory; null = the embedded "
                                                  "all-MiniLM-L6-v2 (the reference judge's)")
    max_seq_length: int = Field(128, ge=8, description="tokens embedded per text (the encoder truncates)")
    l2: float = Field(0.1, ge=0.0, description="L2 penalty on the head (mean-loss units)")
    batch_size: int = Field(64, ge=1, description="texts per encoder batch")
    # The pairs' margins in the loss (reward.use_margin is the LM's). Off: the judges' margins (up to
    # 2 logits) ask a linear head on unit-norm embeddings for gaps it can only reach with large
    # weights; with them held-out HH accuracy fell from 0.65 to 0.50 (2026-12-02, 34 pairs).
    use_margin: bool = False


class RewardParams(TrainLoopParams):
    # lm: a score head on a causal LM (reward.base), trained with TRL's RewardTrainer (the LoRA/full
    # settings below); embedding: a linear head on a frozen sentence encoder (reward.embedding),
    # every pair embedded once, then a convex fit: far more pairs per CPU-second.
    backbone: Literal["lm", "embedding"] = "lm"
    embedding: EmbeddingRewardParams = EmbeddingRewardParams()
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

        if self.backbone == "embedding":  # no LM, no PEFT: only the encoder, found when the stage loads it
            return []
        base = params.model.base if self.base == "models/sft" and not Path(self.base).exists() else self.base
        problems = self._common_checks(params, self.max_length, base)
        if self.peft in PROMPT_LEARNING:
            # Checked on tiny:llama with TRL's RewardTrainer (tests/training/test_peft_methods.py):
            # prefix: PEFT raises "Model does not support past key values which are required for
            # prefix tuning." (the *ForSequenceClassification forward takes no past_key_values);
            # prompt/ptuning train, but PEFT passes inputs_embeds, so transformers cannot find the
            # last non-pad token and reads the reward at the last position: a pad token of every
            # shorter sequence in a right-padded batch (the same text scores differently alone and padded).
            reason = ("PEFT's sequence classifier cannot take a prefix (the model's forward has no past_key_values)"
                      if self.peft == "prefix" else
                      "PEFT feeds the classifier inputs_embeds, so it cannot find the last non-pad token and "
                      "reads the reward at a pad token of every shorter sequence in a padded batch")
            problems.append(f"peft: {self.peft} does not work for a reward model: {reason}; use reward.peft: lora | "
                            "adalora | ia3 | none")
        if self.base == "models/sft" and params.sft.peft in PROMPT_LEARNING:
            problems.append(
                f"base: models/sft will hold a {params.sft.peft} adapter (sft.peft: {params.sft.peft}), learned virtual "
                "tokens with no weights to put a reward head on: set reward.base to a full model, e.g. "
                f"{params.model.base} (model.base)"
            )
        return problems
