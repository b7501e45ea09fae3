"""The PEFT family of `sft.peft` (and `reward.peft`): AdaLoRA, IA³, prefix, prompt and P-tuning.

On the tiny model each method trains in the sft stage (finite loss, its size recorded), saves an
adapter that the sample stage's loader generates with (LoRA/AdaLoRA/IA³ merged and on CTranslate2;
prefix/prompt/P-tuning as base + PeftModel on HF, which `auto` falls back to), and validation
rejects the combinations that cannot work, naming the param. The reward-side rejections are
checked against what PEFT/transformers actually do.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from alignflow.config import ParamsError, validate

from .conftest import smoke_params

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer prompt with many more words in it than the first one has."}],
]
PROMPT_LEARNING = ("prefix", "prompt", "ptuning")
# What every prompt-learning run needs besides its own settings (validation says why).
PROMPT_LEARNING_OK = {"align.method": "best_of_n", "reward.base": "tiny:llama"}
LM_REWARD = {"reward.backbone": "lm"}  # reward.base / reward.peft: the LM backbone (the default embeds)
# tiny:llama: hidden 64, 2 layers, 2 key/value heads of 16 dims (k/v width 32)
HIDDEN, LAYERS, KV_DIM = 64, 2, 32
METHODS = {
    "adalora": {},
    "ia3": {},
    "prefix": {"sft.prefix.num_virtual_tokens": 8, "sft.prefix.prefix_projection": True,
               "sft.prefix.encoder_hidden_size": 32},
    "prompt": {"sft.prompt.init_text": "Answer briefly and politely."},
    "ptuning": {"sft.ptuning.num_virtual_tokens": 8, "sft.ptuning.encoder_hidden_size": 32},
}


def method_params(method: str, **extra) -> dict:
    over = {"sft.peft": method, **METHODS[method], **extra}
    return {**PROMPT_LEARNING_OK, **over} if method in PROMPT_LEARNING else over


# --- each method trains, is recorded, saves, loads and generates ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_sft_trains_saves_and_the_sample_loader_generates(method, project, request, caplog):
    from alignflow.models import UnmergeableAdapter, load_causal_lm, resolve_spec
    from alignflow.rlhf import ov_engine
    from alignflow.rlhf.generation import make_generator
    from alignflow.rlhf.sample import sample_prompts
    from alignflow.training import sft

    tracked = method == "prompt"  # one prompt-learning adapter through MLflow logging + registry + judge_eval
    judged = {"sft.judge_eval.max_prompts": 3, "sft.judge_eval.max_new_tokens": 8} if tracked else {}
    _, params = project(method_params(method, **{"sft.max_steps": 2, "sft.save_steps": 2, "sft.eval_steps": 2,
                                                   "tracking.log_models": tracked, **judged}), n_train=8)
    if tracked:
        from alignflow.stage import run_stage

        request.getfixturevalue("tracking_env")
        metrics = run_stage("sft", sft.run, params)
    else:
        metrics = sft.run(params, None)

    # --- trained and recorded
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["trainable_fraction"] < 0.02  # the base is frozen: a few % at most of even a 3M-param model
    assert 0 < metrics["adapter_params"] <= metrics["trainable_params"]
    if method == "prompt":  # num_virtual_tokens x hidden size, whatever init
        assert metrics["trainable_params"] == metrics["adapter_params"] == 16 * HIDDEN
    if method == "prefix":  # saved: the prefix itself (keys + values per layer), not its projection MLP
        assert metrics["adapter_params"] == 8 * LAYERS * 2 * KV_DIM < metrics["trainable_params"]
    if method == "adalora":  # the budget went from init_r (12) to target_r (8) by the last step
        assert metrics["adalora_mean_rank"] == 8.0
        assert metrics["adapter_params"] < metrics["trainable_params"]
        assert json.loads(Path("models/sft/adapter_config.json").read_text())["rank_pattern"]
    meta = json.loads(Path("models/sft/alignflow_model.json").read_text())
    assert meta["adapter"] is True and meta["peft"] == method and meta["base"] == "tiny:llama"

    # --- loads: merged for weight methods, base + PeftModel for prompt learning
    model, _ = load_causal_lm("models/sft", device="cpu")
    assert model.active_peft_config.is_prompt_learning == (method in PROMPT_LEARNING)
    if method in PROMPT_LEARNING:
        with pytest.raises(UnmergeableAdapter, match=f"sft.peft: {method}"):
            resolve_spec("models/sft")
    else:
        assert not (Path(resolve_spec("models/sft")) / "adapter_config.json").exists()

    # --- generates through the sample stage's path (sample.backend: auto)
    with caplog.at_level(logging.WARNING, logger="alignflow.rlhf.generation"):
        gens, backend = sample_prompts(params, PROMPTS, "models/sft")
    assert [len(g) for g in gens] == [params.sample.k] * len(PROMPTS)
    assert all(g.num_tokens > 0 for row in gens for g in row)
    if ov_engine.installed():
        assert backend == ("hf" if method in PROMPT_LEARNING else "openvino")
        if method in PROMPT_LEARNING:  # each engine says why it cannot, then HF generates
            assert "OpenVINO cannot run it" in caplog.text and "CTranslate2 cannot run it" in caplog.text
            with pytest.raises(ParamsError, match=r"sample.backend: ct2 cannot run models/sft: .*virtual tokens"):
                make_generator("models/sft", "ct2", fallback=False, param="sample.backend")

    if tracked:  # logged with mlflow.transformers (adapter + local base), registered, loadable back
        import mlflow

        saved = json.loads(Path("metrics/sft.json").read_text())
        assert saved["trainable_params"] == metrics["trainable_params"]
        version = mlflow.MlflowClient().get_model_version_by_alias("alignflow-sft", "candidate")
        assert version.tags["adapter"] == "True" and int(version.version) == metrics["registered_version"]
        components = mlflow.transformers.load_model(f"runs:/{version.run_id}/model", return_type="components")
        assert components["model"].active_peft_config.peft_type.value == "PROMPT_TUNING"
        # sft.judge_eval: 3 validation prompts answered on HF (prompt learning), judged, the rows logged
        assert metrics["judge_n_prompts"] == 3 and metrics["judge_backend"] == "hf"
        assert metrics["judge_score_ci_low"] <= metrics["judge_score_mean"] <= metrics["judge_score_ci_high"]
        assert saved["judge_score_mean"] == metrics["judge_score_mean"]
        table = mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/judge_eval.json")
        rows = json.loads(Path(table).read_text())
        assert len(rows["data"]) == 3 and rows["columns"] == ["prompt", "response", "reference", "score"]
    else:
        assert "judge_score_mean" not in metrics  # off by default


def test_trainable_params_differ_by_method():
    """The same tiny model, each method's default settings: six different sizes, all a sliver of it."""
    from peft import get_peft_model

    from alignflow.models import load_causal_lm
    from alignflow.training.peft_methods import peft_config

    params = validate(smoke_params())
    counts = {}
    for method in ("lora", "adalora", "ia3", "prefix", "prompt", "ptuning"):
        section = params.sft.model_copy(update={"peft": method})
        model, tok = load_causal_lm("tiny:llama", device="cpu", dtype="float32")
        peft_model = get_peft_model(model, peft_config(section, "CAUSAL_LM", total_steps=4,
                                                       tokenizer_dir=tok.name_or_path))
        counts[method], total = peft_model.get_nb_trainable_parameters()
        assert counts[method] < 0.02 * total, (method, counts[method], total)
    assert len(set(counts.values())) == len(counts), counts
    # IA³ rescales k, v (2 x 32) and the down projection's input (128) per layer: the smallest
    assert counts["ia3"] == LAYERS * (KV_DIM + KV_DIM + 128) == min(counts.values())
    assert counts["prompt"] == 16 * HIDDEN


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_ia3_and_adalora_defaults_fit_every_tiny_architecture(arch):
    """PEFT's per-architecture IA³ modules (qwen2: q/v/down_proj, gpt2: c_attn/mlp.c_proj) and
    AdaLoRA on all-linear (gpt2's Conv1D included) build and run a forward pass."""
    import torch
    from peft import get_peft_model

    from alignflow.models import load_causal_lm
    from alignflow.training.peft_methods import peft_config

    params = validate(smoke_params())
    for method in ("ia3", "adalora", "ptuning"):
        model, tok = load_causal_lm(f"tiny:{arch}", device="cpu", dtype="float32")
        peft_model = get_peft_model(model, peft_config(params.sft.model_copy(update={"peft": method}), "CAUSAL_LM",
                                                       total_steps=4))
        assert peft_model.get_nb_trainable_parameters()[0] > 0
        ids = tok("hello there", return_tensors="pt")
        with torch.no_grad():
            assert torch.isfinite(peft_model(**ids).logits).all()


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"sft.peft": "prompt", "reward.base": "tiny:llama"},
     r"sft.peft: prompt adds learned virtual tokens .* align.method: dpo trains a fresh LoRA on the merged SFT"),
    ({"sft.peft": "ptuning", "align.method": "best_of_n", **LM_REWARD},
     r"reward.base: models/sft will hold a ptuning adapter .* set reward.base to a full model, e.g. tiny:llama"),
    ({"sft.peft": "prefix", **PROMPT_LEARNING_OK, "sft.packing": True},
     r"sft.packing: true does not work with sft.peft: prefix"),
    ({"sft.peft": "prefix", **PROMPT_LEARNING_OK, "sft.gradient_checkpointing": True},
     r"sft.gradient_checkpointing: true does not work with sft.peft: prefix"),
    ({"sft.peft": "prompt", **PROMPT_LEARNING_OK, "sft.merge_adapter": True},
     r"sft.merge_adapter: true, but sft.peft: prompt .* has no weights to merge"),
    ({"sft.peft": "ptuning", **PROMPT_LEARNING_OK, "sample.backend": "ct2"},
     r"sft.peft: ptuning cannot run on sample.backend: ct2"),
    ({"sft.peft": "prompt", **PROMPT_LEARNING_OK, "eval.backend": "ct2"},
     r"sft.peft: prompt cannot run on eval.backend: ct2"),
    ({"sft.peft": "prompt", **PROMPT_LEARNING_OK, "sft.prompt.num_virtual_tokens": 200, "sft.max_length": 900},
     r"sft.prompt.num_virtual_tokens: 200 virtual tokens \+ max_length \(900\) are above the context of tiny:llama"),
    ({"reward.peft": "prefix", "reward.base": "tiny:llama", **LM_REWARD},
     r"reward.peft: prefix does not work for a reward model: .*past_key_values"),
    ({"reward.peft": "prompt", "reward.base": "tiny:llama", **LM_REWARD},
     r"reward.peft: prompt does not work for a reward model: .*reads the reward at a pad token"),
    ({"reward.peft": "ptuning", "reward.base": "tiny:llama", **LM_REWARD}, r"reward.peft: ptuning does not work for a reward model"),
    ({"sft.peft": "adalora", "sft.adalora.tinit": 3, "sft.adalora.tfinal": 1},
     r"sft.adalora.tinit: tinit \(3\) \+ tfinal \(1\) leave no step of max_steps \(4\)"),
    ({"sft.peft": "adalora", "sft.adalora.target_r": 16}, r"sft.adalora: Value error, target_r: 16 is above init_r \(12\)"),
    ({"sft.peft": "ia3", "sft.ia3.target_modules": ["k_proj"], "sft.ia3.feedforward_modules": ["down_proj"]},
     r"sft.ia3: Value error, feedforward_modules: \['down_proj'\] are not in target_modules"),
    ({"sft.peft": "qlora"}, r"sft.peft: qlora needs a GPU"),
    ({"reward.peft": "qlora", "reward.base": "tiny:llama", **LM_REWARD}, r"reward.peft: qlora needs a GPU"),
])
def test_validation_rejects_what_cannot_work_naming_the_param(overrides, message):
    with pytest.raises(ParamsError, match=message):
        validate(smoke_params(overrides))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_validates_where_it_can_work(method):
    params = validate(smoke_params(method_params(method)))
    assert params.sft.peft == method
    if method not in PROMPT_LEARNING:  # weight methods also go on the reward model, on models/sft
        assert validate(smoke_params({"sft.peft": method, "reward.peft": method, **LM_REWARD})).reward.peft == method


def test_prompt_learning_reward_models_fail_as_validation_says():
    """The evidence behind rejecting reward.peft: prefix | prompt | ptuning (PEFT 0.21, transformers 5):
    prefix raises in PEFT; prompt tuning runs but scores a right-padded sequence at a pad token,
    so the same text gets another reward next to a longer one (LoRA: the same reward)."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from alignflow.models import load_reward_model

    def scores(config):
        torch.manual_seed(0)
        model, tok = load_reward_model("tiny:llama", device="cpu", dtype="float32")
        tok.padding_side = "right"  # as RewardTrainer pads
        model = get_peft_model(model, config).eval()
        alone = tok(["short text"], return_tensors="pt")
        padded = tok(["short text", "a much, much longer text with many more tokens in it than the first"],
                     padding=True, return_tensors="pt")
        with torch.no_grad():
            return model(**alone).logits[0, 0].item(), model(**padded).logits[0, 0].item()

    with pytest.raises(ValueError, match="Model does not support past key values which are required for prefix"):
        scores(PrefixTuningConfig(num_virtual_tokens=4, task_type="SEQ_CLS"))
    alone, padded = scores(LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS"))
    assert alone == pytest.approx(padded, abs=1e-5)
    alone, padded = scores(PromptTuningConfig(num_virtual_tokens=4, task_type="SEQ_CLS"))
    assert alone != pytest.approx(padded, abs=1e-5)


# --- resume -------------------------------------------------------------------------------------------


def interrupted_then_resumed(params, root: Path) -> dict:
    """sft fails after step 3 of 4 (a checkpoint at step 2), then a re-run resumes it."""
    from transformers import TrainerCallback

    from alignflow.training import launcher, sft
    from alignflow.training.launcher import TrainingError

    armed = [True]

    class FailAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if armed[0] and state.global_step == 3:
                raise RuntimeError("injected failure after step 3")

    prepare = launcher.prepare_hf_trainer

    def prepare_with_failure(trainer, *args, **kwargs):
        trainer.add_callback(FailAfterStep3())
        return prepare(trainer, *args, **kwargs)

    launcher.prepare_hf_trainer = prepare_with_failure
    try:
        with pytest.raises(TrainingError, match="injected failure"):
            sft.run(params, None)
        assert list(root.glob(".ray_results/sft-*/hf/checkpoint-2"))
        armed[0] = False
        metrics = sft.run(params, None)
    finally:
        launcher.prepare_hf_trainer = prepare
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4 and math.isfinite(metrics["train_loss"])
    return metrics


@pytest.mark.slow
def test_adalora_resumes_from_a_full_rank_checkpoint(project, monkeypatch):
    """PEFT saves AdaLoRA cut to its rank pattern, which HF's resume cannot load into the full-rank
    model ("size mismatch for ...lora_A"); checkpoints hold the full rank and the pattern rides in
    trainer_state.json, so a failed run resumes at its checkpoint and still prunes to target_r."""
    from alignflow.models import load_causal_lm, resolve_spec
    from alignflow.training import peft_methods

    root, params = project({"sft.peft": "adalora", "sft.max_steps": 4, "sft.save_steps": 2, "sft.eval_steps": 100,
                            "tracking.log_models": False}, n_train=8)
    seen = []
    original = peft_methods.AdaLoraCallback.on_train_begin

    def record(self, args, state, control, model=None, **kwargs):
        original(self, args, state, control, model=model, **kwargs)
        seen.append((state.global_step, model.peft_config["default"].rank_pattern is not None))

    monkeypatch.setattr(peft_methods.AdaLoraCallback, "on_train_begin", record)
    metrics = interrupted_then_resumed(params, root)
    assert seen == [(0, False), (2, True)]  # the resumed run started from step 2's rank pattern
    [checkpoint] = root.glob(".ray_results/sft-*/hf/checkpoint-2")
    assert json.loads((checkpoint / "adapter_config.json").read_text())["rank_pattern"] is None  # full rank
    assert metrics["adalora_mean_rank"] == 8.0
    assert json.loads(Path("models/sft/adapter_config.json").read_text())["rank_pattern"]
    load_causal_lm("models/sft", device="cpu")
    assert Path(resolve_spec("models/sft"), "model.safetensors").exists()  # merged


@pytest.mark.slow
def test_ptuning_resumes_to_the_same_adapter_as_an_uninterrupted_run(project):
    """PEFT saves P-tuning as the encoder's output only; checkpoints keep the whole encoder, so an
    interrupted and resumed run ends with the virtual tokens of one that was never interrupted."""
    import shutil

    from safetensors.torch import load_file

    from alignflow.training import sft

    root, params = project({"sft.peft": "ptuning", **PROMPT_LEARNING_OK, "sft.ptuning.encoder_hidden_size": 32,
                            "sft.max_steps": 4, "sft.save_steps": 2, "sft.eval_steps": 100,
                            "sft.learning_rate": 0.01, "tracking.log_models": False}, n_train=8)
    sft.run(params, None)
    straight = load_file("models/sft/adapter_model.safetensors")["prompt_embeddings"]
    shutil.rmtree(root / ".ray_results")  # the next runs start over, under the same run name
    interrupted_then_resumed(params, root)
    [checkpoint] = root.glob(".ray_results/sft-*/hf/checkpoint-2")
    assert (checkpoint / "prompt_encoder.safetensors").exists()
    resumed = load_file("models/sft/adapter_model.safetensors")["prompt_embeddings"]
    assert straight.abs().max() > 0.1 and (resumed - straight).abs().max() < 1e-5


# --- generation with prompt learning -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_prompt_learning_generates_what_peft_computes_without_a_cache(method):
    """PEFT's generate() for prompt tuning and P-tuning is right only for the first token once the
    KV cache is on (huggingface/peft#1391), and it ignores position ids, so left padding shifts
    positions. alignflow generates with the base model on [pads, virtual tokens, prompt] embeddings:
    greedy tokens equal PEFT's uncached generation of each prompt alone, in one padded batch."""
    import torch
    from peft import LoraConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    from alignflow.models import load_causal_lm
    from alignflow.rlhf.generation import virtual_token_inputs, encode_prompts, generate_with_details, left_pad

    model, tok = load_causal_lm("tiny:llama", device="cpu", dtype="float32")
    assert virtual_token_inputs(model) is None
    lora = get_peft_model(load_causal_lm("tiny:llama", device="cpu")[0], LoraConfig(r=2, target_modules="all-linear"))
    assert virtual_token_inputs(lora) is None
    torch.manual_seed(0)
    config = (PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM") if method == "prompt" else
              PromptEncoderConfig(num_virtual_tokens=8, encoder_hidden_size=32, task_type="CAUSAL_LM"))
    model = get_peft_model(model, config).eval()
    assert virtual_token_inputs(model) is not None
    with torch.no_grad():  # virtual tokens strong enough to matter to the random model
        for param in model.prompt_encoder["default"].parameters():
            param.mul_(50)

    encoded = encode_prompts(tok, PROMPTS)
    assert len({len(e) for e in encoded}) == 2  # two lengths: the batch below is left-padded
    greedy = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, output_scores=True,
                  return_dict_in_generate=True)
    reference = []  # PEFT's own path, each prompt alone, without the cache it gets wrong
    for ids in encoded:
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             use_cache=False, **greedy)
        reference.append((out.sequences[0, len(ids):].tolist(), torch.cat(out.scores)))
    ids, mask = left_pad(encoded, tok.pad_token_id)
    batched = model.get_base_model().generate(**virtual_token_inputs(model)(ids, mask), use_cache=True, **greedy)
    for row, (tokens, scores) in enumerate(reference):  # the same logits at every step, padded and cached
        assert batched.sequences[row].tolist() == tokens
        assert torch.allclose(torch.stack([s[row] for s in batched.scores]), scores, atol=1e-4)
    base, calls = model.get_base_model(), []
    base_generate = base.generate
    base.generate = lambda **kw: calls.append(sorted(kw)) or base_generate(**kw)
    gens = generate_with_details(model, tok, PROMPTS, n=1, max_new_tokens=6, temperature=0, batch_size=8,
                                 progress=False)
    assert len(calls) == 1 and "inputs_embeds" in calls[0] and "input_ids" not in calls[0]  # one padded batch
    assert [g[0].token_ids for g in gens] == [t[: len(g[0].token_ids)] for (t, _), g in zip(reference, gens)]
