"""The PEFT methods of the sft and reward stages (`<section>.peft`), built with `peft`.

- lora, qlora, adalora, ia3 change weights: the adapter merges into a cached copy, so every
  later stage (CTranslate2 included) sees a plain model;
- prefix, prompt, ptuning learn virtual tokens: they cannot merge and load as base + PeftModel
  on HF generation (models/specs.py raises UnmergeableAdapter; validation says which
  combinations cannot work).
What the trainers do not do for a method is here: AdaLoRA's rank schedule and orthogonality
penalty (`AdaLoraCallback`, `with_peft_method`), and a resume that restores what PEFT's own
checkpoints leave out (AdaLoRA's rank pattern, P-tuning's prompt encoder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from alignflow.config import ParamsError


def peft_config(section, task_type: str, *, total_steps: int | None = None, tokenizer_dir: str | None = None):
    """The PEFT config of a training section: `section.peft` names the method (default lora: the
    align section has no `peft`) and the sub-section of the same name holds its settings; none
    means full fine-tuning (None).

    `total_steps` (adalora): the planned optimizer steps; `AdaLoraCallback` replaces it with the
    trainer's own count when training starts. `tokenizer_dir` (prompt with init_text): where PEFT
    loads the tokenizer that turns the text into the initial virtual tokens."""
    method = getattr(section, "peft", "lora")
    if method == "none":
        return None
    import peft

    if method in ("lora", "qlora"):
        lora = section.lora
        return peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            task_type=task_type, bias="none",
        )
    if method == "adalora":
        ada = section.adalora
        total = total_steps if total_steps and total_steps > 0 else ada.tinit + ada.tfinal + 1
        if ada.tinit + ada.tfinal >= total:
            raise ParamsError(
                f"adalora.tinit: tinit ({ada.tinit}) + tfinal ({ada.tfinal}) leave none of the {total} training steps "
                "to prune ranks in (AdaLoRA needs tinit < total steps - tfinal)"
            )
        return peft.AdaLoraConfig(
            init_r=ada.init_r, target_r=ada.target_r, lora_alpha=ada.alpha, lora_dropout=ada.dropout,
            target_modules=ada.target_modules, tinit=ada.tinit, tfinal=ada.tfinal, deltaT=ada.deltaT,
            beta1=ada.beta1, beta2=ada.beta2, orth_reg_weight=ada.orth_reg_weight, total_step=total,
            task_type=task_type, bias="none",
        )
    if method == "ia3":
        # None: PEFT's per-architecture defaults (TRANSFORMERS_MODELS_TO_IA3_*_MODULES_MAPPING)
        return peft.IA3Config(target_modules=section.ia3.target_modules,
                              feedforward_modules=section.ia3.feedforward_modules, task_type=task_type)
    if method == "prefix":
        pre = section.prefix
        return peft.PrefixTuningConfig(num_virtual_tokens=pre.num_virtual_tokens, prefix_projection=pre.prefix_projection,
                                       encoder_hidden_size=pre.encoder_hidden_size, task_type=task_type)
    if method == "prompt":
        prompt = section.prompt
        if prompt.init_text is None:
            return peft.PromptTuningConfig(num_virtual_tokens=prompt.num_virtual_tokens,
                                           prompt_tuning_init=peft.PromptTuningInit.RANDOM, task_type=task_type)
        if tokenizer_dir is None:
            raise ValueError("peft_config: prompt.init_text needs the tokenizer's directory (tokenizer_dir)")
        return peft.PromptTuningConfig(num_virtual_tokens=prompt.num_virtual_tokens,
                                       prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                       prompt_tuning_init_text=prompt.init_text, tokenizer_name_or_path=tokenizer_dir,
                                       task_type=task_type)
    if method == "ptuning":
        pt = section.ptuning
        return peft.PromptEncoderConfig(
            num_virtual_tokens=pt.num_virtual_tokens, encoder_hidden_size=pt.encoder_hidden_size,
            encoder_reparameterization_type=pt.encoder_reparameterization_type,
            encoder_num_layers=pt.encoder_num_layers, encoder_dropout=pt.encoder_dropout, task_type=task_type,
        )
    raise ParamsError(f"peft: unknown method {method!r}")



def planned_steps(section, examples: int, world_size: int = 1) -> int:
    """Optimizer steps a run will take: max_steps, else what num_epochs over `examples` come to
    (HF's count; packing changes `examples`, and AdaLoraCallback then takes the trainer's)."""
    if section.max_steps > 0:
        return section.max_steps
    batches = math.ceil(examples / (section.per_device_batch_size * max(world_size, 1)))
    return max(1, math.ceil(section.num_epochs * math.ceil(batches / section.gradient_accumulation_steps)))


def trainable_summary(model) -> dict[str, Any]:
    """trainable_params, total_params and trainable_fraction of a (PEFT) model about to train."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total),
            "trainable_fraction": round(trainable / total, 6) if total else None}


def saved_adapter_params(model_dir: Path) -> int | None:
    """Parameters in a saved adapter (adapter_model.safetensors): what the method adds to the base
    (AdaLoRA after pruning, P-tuning's final virtual-token embeddings); None for full weights."""
    from safetensors import safe_open

    path = Path(model_dir) / "adapter_model.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        return int(sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys()))


def adalora_orth_penalty(model):
    """AdaLoRA's orthogonality penalty, mean over matrices of ||P·Pᵀ − I||_F (and Qᵀ·Q).

    PEFT's AdaLoraModel adds it to `outputs.loss`, which TRL's trainers do not use (SFTTrainer
    takes its loss from the fused head's log-probs, RewardTrainer from the logits), so
    `with_peft_method` adds it to theirs."""
    import torch

    base = model.base_model
    name = base.trainable_adapter_name
    terms = []
    for n, p in base.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n and p.requires_grad and p.numel():
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype), p="fro"))
    return torch.stack(terms).mean() if terms else None


class AdaLoraCallback(TrainerCallback, ExportableState):
    """AdaLoRA's rank schedule inside an HF trainer, which does not run it itself.

    `update_and_allocate` must see the gradients ("after loss.backward() and before zero_grad()",
    peft/tuners/adalora/model.py): `on_optimizer_step` is the hook between `optimizer.step()` and
    `model.zero_grad()`. `total_step` is set from the trainer's own step count at train begin.

    Checkpoints (resume): PEFT saves an AdaLoRA adapter cut to its `rank_pattern`, which the HF
    trainer cannot load back into the full-rank model it resumes (nor match with the optimizer's
    state): "size mismatch for ...lora_A.default: copying a param with shape [8, 64] from
    checkpoint, the shape in current model is [12, 64]". So a checkpoint is written at full rank
    (the pruned singular values are zeros in it: the same function) and the pattern travels in
    trainer_state.json (this callback's exported state), to be put back on resume. The importance
    averages restart from zero on resume (PEFT keeps them in memory only). A run that only
    restores its final checkpoint (`train_or_restore`, no callback runs) gets the pattern back
    from `restore_peft_state`."""

    def __init__(self, section_name: str = "sft"):
        self.section_name = section_name
        self.held = None  # the rank pattern, while a checkpoint is being written

    def state(self) -> dict:
        return {"args": {"section_name": self.section_name}, "attributes": {"held": self.held}}

    @staticmethod
    def _config(model):
        return model.peft_config[model.base_model.trainable_adapter_name]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = self._config(model)
        if state.max_steps > 0 and state.max_steps != config.total_step:
            if config.tinit + config.tfinal >= state.max_steps:
                raise ParamsError(
                    f"{self.section_name}.adalora.tinit: tinit ({config.tinit}) + tfinal ({config.tfinal}) leave none "
                    f"of the {state.max_steps} training steps to prune ranks in"
                )
            config.total_step = state.max_steps
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict) and config.rank_pattern is None:
            config.rank_pattern = (saved.get("attributes") or {}).get("held")  # a resumed run

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        # global_step counts finished steps; this one finishes step global_step + 1 (1-based, so the
        # last step of a tfinal: 0 schedule fixes the final ranks)
        model.base_model.update_and_allocate(state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save:  # set by DefaultFlowCallback, which runs first
            config = self._config(model)
            self.held, config.rank_pattern = config.rank_pattern, None

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.held is not None:
            self._config(model).rank_pattern = self.held
        self.held = None


PROMPT_ENCODER_FILE = "prompt_encoder.safetensors"


class PromptEncoderCallback(TrainerCallback):
    """Checkpoints of a prompt-learning adapter keep its whole prompt encoder.

    PEFT saves a prompt-learning adapter as its final virtual tokens only ("prompt_embeddings": for
    P-tuning and projected prefix tuning, the encoder's *output*), and loading it puts them in the
    encoder's input embedding; the MLP/LSTM is not saved at all. So an HF resume would run the old
    output through a freshly initialised encoder (measured on tiny:llama: P-tuning resumed at step
    2 of 4 ended 0.94 max-abs away from the uninterrupted run's tokens, whose own max is 0.91), or,
    for projected prefix tuning, fail ("Error(s) in loading state_dict for Embedding": the saved
    prefix is wider than the embedding it is loaded into). So a checkpoint's adapter file holds the
    encoder's input embedding (what the resuming trainer loads it into), the encoder's whole state
    goes next to it, and it is put back on resume. Prompt tuning and plain prefix tuning have no
    encoder (the embedding is the output) and resume exactly either way. The final adapter
    (save_model_dir) is PEFT's: the virtual tokens."""

    def __init__(self, resume: str | None = None):
        self.resume = resume

    def on_save(self, args, state, control, model=None, **kwargs):
        if args.should_save:  # the main process writes the checkpoint
            from safetensors.torch import save_file

            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            encoder = model.prompt_encoder[model.active_adapter]
            save_file({"prompt_embeddings": encoder.embedding.weight.detach().cpu().contiguous()},
                      str(checkpoint / "adapter_model.safetensors"), metadata={"format": "pt"})
            tensors = {k: v.detach().cpu().contiguous() for k, v in model.prompt_encoder.state_dict().items()}
            save_file(tensors, str(checkpoint / PROMPT_ENCODER_FILE))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.resume:
            restore_peft_state(model, self.resume)


def restore_peft_state(model, checkpoint: str) -> None:
    """What a checkpoint holds of a PEFT method beyond the adapter HF loads: a prompt encoder
    (PromptEncoderCallback), AdaLoRA's rank pattern (AdaLoraCallback's state in trainer_state.json).
    For a run that restores its final checkpoint without training (`train_or_restore`), and for
    the callbacks on resume."""
    if getattr(model, "active_peft_config", None) is None:
        return
    config = model.active_peft_config
    if config.is_prompt_learning:
        path = Path(checkpoint) / PROMPT_ENCODER_FILE
        if path.exists():
            from safetensors.torch import load_file

            model.prompt_encoder.load_state_dict(load_file(str(path)), strict=True)
    elif config.peft_type.value == "ADALORA" and config.rank_pattern is None:
        state = Path(checkpoint) / "trainer_state.json"
        callbacks = json.loads(state.read_text()).get("stateful_callbacks") or {} if state.exists() else {}
        saved = callbacks.get(AdaLoraCallback.__name__)
        if isinstance(saved, dict):
            config.rank_pattern = (saved.get("attributes") or {}).get("held")


def adalora_ranks(model) -> dict[str, Any]:
    """The ranks AdaLoRA kept (non-zero singular values), mean over the adapted matrices."""
    name = model.base_model.trainable_adapter_name
    ranks = [int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith(f"lora_E.{name}")]
    return {"adalora_mean_rank": round(sum(ranks) / len(ranks), 3)} if ranks else {}


def with_peft_method(trainer, section, section_name: str, resume: str | None = None):
    """What a PEFT method needs of a trainer beyond the config: the prompt encoder in checkpoints
    (prompt learning); AdaLoRA's rank schedule and its orthogonality penalty on the training loss
    (so the logged train loss includes it, logged alone as adalora_orth_penalty; eval losses stay
    plain, comparable across methods). `resume`: the checkpoint the run resumes from."""
    method = getattr(section, "peft", "lora")
    if method in ("prefix", "prompt", "ptuning"):
        trainer.add_callback(PromptEncoderCallback(resume))
    if method != "adalora":
        return trainer
    trainer.add_callback(AdaLoraCallback(section_name))
    weight = section.adalora.orth_reg_weight
    if weight > 0:
        compute_loss = trainer.compute_loss
        model = trainer.model

        def compute_loss_with_penalty(model_in, inputs, return_outputs=False, num_items_in_batch=None):
            out = compute_loss(model_in, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            if not model.training:
                return out
            penalty = adalora_orth_penalty(model)
            if penalty is None:
                return out
            store = getattr(trainer, "_metrics", None)  # TRL's per-log averages: logged with the loss
            if isinstance(store, dict) and "train" in store:
                store["train"]["adalora_orth_penalty"].append(float(penalty.detach()))
            if return_outputs:
                return out[0] + weight * penalty, out[1]
            return out + weight * penalty

        trainer.compute_loss = compute_loss_with_penalty
    return trainer
