"""Params shared by several stages: the model, Ray scaling, MLflow tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignflow.config.base import Section


class ModelParams(Section):
    # Model spec string (docs/ARCHITECTURE.md, "Model specs"): embedded:<name>, tiny:<arch>, hub id or local path.
    base: str = "embedded:smollm2-135m-instruct"
    trust_remote_code: bool = False
    # Training/generation dtype; "auto" = bf16 on a GPU that supports it, else fp32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # CTranslate2 generation (sample/eval backend ct2): float32 keeps HF's greedy tokens; the int8
    # modes are faster but change most greedy tokens of a 135M model (bench/sample_throughput.py).
    engine_compute_type: Literal["float32", "int8_float32", "int8"] = "float32"
    # Used when the model has no chat template of its own (documented default: ChatML).
    default_chat_template: Literal["chatml"] = "chatml"
    # "auto" = the library default (sdpa); flash attention needs a GPU and the flash-attn package.
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3"] = "auto"


class RayParams(Section):
    address: str | None = None  # RAY_ADDRESS in the environment wins
    num_workers: int = Field(0, ge=0, description="0 = Ray Train local mode (in-process)")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 2})
    storage_path: str = ".ray_results"
    # use_gpu on a cluster: how long to wait for GPU nodes (an autoscaler may add them) before failing
    gpu_wait_s: float = Field(300, gt=0)


class TrackingParams(Section):
    experiment: str = "alignflow"
    # MLFLOW_TRACKING_URI in the environment wins; else sqlite:///mlflow.db in the working dir.
    tracking_uri: str | None = None
    register_models: bool = True
    log_models: bool = True


class LoraParams(Section):
    """PEFT LoRA settings, shared by sft, reward and align."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # "all-linear" = every linear layer but the output head, whatever the architecture calls them.
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class AdaLoraParams(Section):
    """PEFT AdaLoRA: LoRA in SVD form (P·Λ·Q) whose rank budget shrinks from `init_r` to an average of
    `target_r` per matrix, pruning the least important singular values (Zhang et al. 2023).

    Schedule, in optimizer steps: `tinit` warm-up steps at the full budget, then a cubic decrease
    (a re-allocation every `deltaT` steps) until `total - tfinal`, then `tfinal` steps at the final
    ranks; `total` is the run's step count (max_steps, or what the epochs come to)."""

    init_r: int = Field(12, ge=1, description="rank of every matrix before pruning")
    target_r: int = Field(8, ge=1, description="average rank left after pruning")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    tinit: int = Field(0, ge=0, description="warm-up steps before any pruning")
    tfinal: int = Field(0, ge=0, description="final steps at the pruned ranks")
    deltaT: int = Field(1, ge=1, description="steps between two budget allocations")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA of the importance (sensitivity)")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA of its uncertainty")
    orth_reg_weight: float = Field(0.5, ge=0, description="weight of the P/Q orthogonality penalty")

    @model_validator(mode="after")
    def _budget(self) -> "AdaLoraParams":
        if self.target_r > self.init_r:
            raise ValueError(f"target_r: {self.target_r} is above init_r ({self.init_r}); AdaLoRA only prunes ranks")
        return self


class IA3Params(Section):
    """PEFT IA³: learned vectors that rescale the keys, values and feed-forward activations (Liu et al. 2022).

    null = PEFT's per-architecture defaults (peft.utils.constants TRANSFORMERS_MODELS_TO_IA3_*: llama
    k_proj, v_proj, down_proj; qwen2 q_proj, v_proj, down_proj; gpt2 c_attn, mlp.c_proj)."""

    target_modules: list[str] | None = None
    # Of target_modules, those rescaled at their input (feed-forward) rather than their output.
    feedforward_modules: list[str] | None = None

    @model_validator(mode="after")
    def _subset(self) -> "IA3Params":
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                raise ValueError("feedforward_modules: set target_modules too (feedforward_modules is a subset of them)")
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(f"feedforward_modules: {extra} are not in target_modules")
        return self


class PromptLearningParams(Section):
    """What the prompt-learning methods share: learned virtual tokens in front of every sequence."""

    num_virtual_tokens: int = Field(16, ge=1, le=512)


class PrefixParams(PromptLearningParams):
    """PEFT prefix tuning: learned keys/values prepended at every layer (Li & Liang 2021)."""

    # Reparameterize the prefix through a 2-layer MLP of width encoder_hidden_size while training
    # (steadier; only the resulting prefix is saved).
    prefix_projection: bool = False
    encoder_hidden_size: int = Field(128, ge=1, description="prefix_projection: the MLP's width")


class PromptParams(PromptLearningParams):
    """PEFT prompt tuning: learned input embeddings prepended to the sequence (Lester et al. 2021)."""

    # null = random init; else the virtual tokens start as this text's token embeddings (repeated
    # or cut to num_virtual_tokens).
    init_text: str | None = Field(None, min_length=1)


class PTuningParams(PromptLearningParams):
    """PEFT P-tuning (prompt encoder): virtual-token embeddings produced by a small MLP or LSTM
    (Liu et al. 2021); only the resulting embeddings are saved."""

    encoder_hidden_size: int = Field(128, ge=1)
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = "MLP"
    encoder_num_layers: int = Field(2, ge=1, description="LSTM only (the MLP has 2 layers)")
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)
