"""Model specs: tiny + embedded materialization, tokenizers, adapters, reward heads, the cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from alignflow.models import (
    CHATML_TEMPLATE,
    META_FILE,
    ModelSpecError,
    context_length,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_spec,
    save_model_dir,
)
from alignflow.models import specs

CHAT = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there! ¿Qué tal? 你好"}]


def test_tiny_model_is_small_deterministic_and_round_trips_text():
    path = Path(resolve_spec("tiny:llama"))
    assert (path / "config.json").exists() and list(path.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in path.iterdir()) < 40e6
    model, tok = load_causal_lm("tiny:llama", device="cpu")
    text = "héllo wörld, 你好 — ok"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.chat_template and tok.pad_token is not None and tok.padding_side == "left"
    # Same seed -> same weights as a fresh build from the config.
    rebuilt = specs.tiny_config("llama", len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(specs.TINY_SEED)
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_config(rebuilt, dtype=torch.float32)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert context_length("tiny:llama") == model.config.max_position_embeddings


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_other_tiny_archs_generate(arch):
    model, tok = load_causal_lm(f"tiny:{arch}", device="cpu")
    batch = tok.apply_chat_template([CHAT[:1]], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


def test_unknown_specs_fail_clearly(tmp_path):
    with pytest.raises(ModelSpecError, match="tiny:nope: unknown architecture; available: llama"):
        resolve_spec("tiny:nope")
    with pytest.raises(ModelSpecError, match="unknown embedded model"):
        resolve_spec("embedded:gpt-17")
    with pytest.raises(ModelSpecError, match="no such model directory"):
        resolve_spec(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="without config.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(ModelSpecError, match="could not be fetched"):
        resolve_spec("nobody-xyz/not-a-model")


def test_default_chatml_template_when_model_has_none(tmp_path):
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(resolve_spec("tiny:gpt2"))
    src.chat_template = None
    src.pad_token = None
    src.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "chat_template.jinja").unlink(missing_ok=True)
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.pad_token == tok.eos_token
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi there! ¿Qué tal? 你好<|im_end|>\n"


def test_adapter_dir_round_trip_and_merged_resolution(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    out = save_model_dir(peft_model, tok, tmp_path / "sft", {"base": "tiny:llama", "stage": "sft"}, merged=True)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == "causal_lm" and meta["adapter"] is True and meta["base"] == "tiny:llama"
    assert (out / "adapter_model.safetensors").exists() and (out / "merged" / "config.json").exists()

    loaded, tok2 = load_causal_lm(str(out), device="cpu")
    assert isinstance(loaded, PeftModel)
    assert tok2.chat_template == tok.chat_template  # the training template travels with the model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    peft_model.eval()
    expected = peft_model(ids).logits
    torch.testing.assert_close(loaded(ids).logits, expected)
    # resolve_spec merges the adapter into a cached plain HF dir with the same outputs.
    merged_dir = Path(resolve_spec(str(out)))
    assert merged_dir != out and (merged_dir / "config.json").exists()
    plain, _ = load_causal_lm(str(merged_dir), device="cpu")
    torch.testing.assert_close(plain(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert resolve_spec(str(out)) == str(merged_dir)  # cached


def test_reward_model_from_causal_lm_and_round_trip(tmp_path):
    model, tok = load_reward_model("tiny:llama", device="cpu")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    batch = tok(["a b c", "d"], padding=True, return_tensors="pt")
    scores = model(**batch).logits
    assert scores.shape == (2, 1)
    out = save_model_dir(model, tok, tmp_path / "reward", {"base": "tiny:llama"})
    assert json.loads((out / META_FILE).read_text())["kind"] == "reward"
    again, _ = load_reward_model(str(out), device="cpu")
    torch.testing.assert_close(again(**batch).logits, scores)
    with pytest.raises(ModelSpecError, match="use load_reward_model"):
        load_causal_lm(str(out))


def _resolve_in_child(spec, cache, queue):
    os.environ["ALIGNFLOW_CACHE"] = cache
    real_config = specs.tiny_config

    def counting_config(*args, **kwargs):  # called only when a process actually builds the model
        with open(Path(cache) / "builds.txt", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real_config(*args, **kwargs)

    specs.tiny_config = counting_config
    queue.put(specs.resolve_spec(spec))


def test_concurrent_materialization_builds_once(tmp_path, monkeypatch):
    """Two processes resolving the same spec: one builds, the other waits for the lock."""
    cache = tmp_path / "cache"
    # Reuse the already-built tokenizer so the test does not re-read the GGUF.
    tok_dir = specs.embedded_tokenizer_dir()
    (cache / "models").mkdir(parents=True)
    os.symlink(tok_dir, cache / "models" / tok_dir.name)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=("tiny:gpt2", str(cache), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert len((cache / "builds.txt").read_text().split()) == 1
    assert (Path(results[0]) / ".complete").exists()
    assert not [d for d in (cache / "models").iterdir() if ".tmp-" in d.name]


@pytest.mark.slow
def test_embedded_smollm2_answers_in_its_own_template():
    path = Path(resolve_spec("embedded:smollm2-135m-instruct"))
    assert not list(path.glob("*.gguf")) and (path / "model.safetensors").exists()
    model, tok = load_causal_lm("embedded:smollm2-135m-instruct", device="cpu")
    assert "<|im_start|>" in tok.chat_template and tok.chat_template != CHATML_TEMPLATE
    batch = tok.apply_chat_template(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:])
    assert context_length("embedded:smollm2-135m-instruct") == model.config.max_position_embeddings
