"""Params shared by several stages: the model, Ray scaling, MLflow tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
