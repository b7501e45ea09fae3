"""The CTranslate2 back end: chosen when installed, falls back to HF, and generates what HF does.

Fidelity is the contract: greedy ids equal HF's, a sampled token's log-prob under the engine equals
HF's log_softmax (so KL and the RL math computed on HF stay valid for engine samples), an adapter
is merged so the engine samples exactly the trained policy, and a conversion is made once.
"""

from __future__ import annotations

import logging

import pytest
import torch

from alignflow.rlhf import ct2_engine, generation
from tests.rlhf.conftest import ENGINE_PROMPTS as PROMPTS
from tests.rlhf.conftest import greedy_ids

pytestmark = pytest.mark.skipif(not ct2_engine.installed(), reason="ctranslate2 is a project dependency")

# --- choosing a back end ---------------------------------------------------------------------------


def test_auto_picks_the_fastest_installed_engine_and_explicit_names_are_kept(monkeypatch):
    from alignflow.rlhf import ov_engine

    assert generation.choose_backend("auto", param="eval.backend") == "openvino"
    assert generation.choose_backend("hf", param="eval.backend") == "hf"
    assert generation.choose_backend("ct2", param="eval.backend") == "ct2"
    monkeypatch.setattr(ov_engine, "installed", lambda: False)
    assert generation.choose_backend("auto", param="eval.backend") == "ct2"


def test_engine_missing_auto_falls_back_to_hf_with_a_log_line(monkeypatch, caplog):
    from alignflow.rlhf import ov_engine

    monkeypatch.setattr(ct2_engine, "installed", lambda: False)
    monkeypatch.setattr(ov_engine, "installed", lambda: False)
    with caplog.at_level(logging.INFO, logger="alignflow.rlhf.generation"):
        assert generation.choose_backend("auto", param="sample.backend") == "hf"
    assert "sample.backend: auto -> hf" in caplog.text and "no CPU inference engine is installed" in caplog.text
    from alignflow.config import ParamsError

    with pytest.raises(ParamsError, match="sample.backend: ct2 needs the ctranslate2 package"):
        generation.choose_backend("ct2", param="sample.backend")


def test_a_model_ct2_cannot_convert_runs_on_hf_under_auto_only(tmp_path, fresh_cache, caplog):
    """GPT-Neo has no CTranslate2 converter: auto (fallback) generates on HF, an explicit ct2 fails."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from alignflow.models import load_tokenizer

    tok = load_tokenizer("tiny:llama")
    config = GPTNeoConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2,
                          attention_types=[[["global"], 2]], max_position_embeddings=256)
    torch.manual_seed(0)
    GPTNeoForCausalLM(config).save_pretrained(tmp_path / "neo")
    tok.save_pretrained(tmp_path / "neo")
    with caplog.at_level(logging.WARNING, logger="alignflow.rlhf.generation"):
        gen = generation.make_generator(str(tmp_path / "neo"), "ct2", fallback=True)
    assert gen.name == "hf" and "CTranslate2 cannot run it" in caplog.text
    assert len(gen.generate_with_details(PROMPTS[:1], max_new_tokens=3, temperature=0, progress=False)[0][0].token_ids) > 0
    with pytest.raises(ct2_engine.UnsupportedModel, match="GPTNeo"):
        generation.make_generator(str(tmp_path / "neo"), "ct2", fallback=False)


# --- fidelity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_ids_equal_hf_at_any_batch_size(arch):
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm(f"tiny:{arch}", device="cpu")
    engine = ct2_engine.CT2Generator(f"tiny:{arch}")
    reference = greedy_ids(generation.generate_with_details(model, tok, PROMPTS, n=1, max_new_tokens=16,
                                                            temperature=0, batch_size=8, progress=False))
    assert all(len(ids) > 0 for ids in reference)
    for batch_size in (1, 3, 8):
        ids = greedy_ids(engine.generate_with_details(PROMPTS, n=1, max_new_tokens=16, temperature=0,
                                                      batch_size=batch_size, progress=False))
        assert ids == reference, f"{arch}, batch {batch_size}"


def test_sampled_token_log_probs_equal_hf_log_softmax():
    """The engine samples from the distribution HF computes: its per-token log-probs (T=1, no
    truncation) match HF's log_softmax at each sampled token within 1e-3."""
    from alignflow.models import load_causal_lm
    from alignflow.rlhf.generation import encode_prompts

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = ct2_engine.CT2Generator("tiny:llama")
    prompt_ids = encode_prompts(tok, PROMPTS[1:2])[0]
    steps = list(engine.load(seed=3).generate_tokens(tok.convert_ids_to_tokens(prompt_ids), max_length=12,
                                                     sampling_topk=0, sampling_temperature=1.0,
                                                     return_log_prob=True, end_token=engine.eos_ids))
    sampled = [s.token_id for s in steps]
    assert len(set(sampled)) > 1  # really sampled, not a constant
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + sampled])).logits[0].float()
    hf = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    hf_sampled = hf[torch.arange(len(sampled)), torch.tensor(sampled)]
    assert torch.allclose(torch.tensor([s.log_prob for s in steps]), hf_sampled, atol=1e-3)


def test_token_agreement_counts_up_to_the_first_divergence():
    assert generation.token_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert generation.token_agreement([[1, 2, 3, 4]], [[1, 9, 3, 4]]) == 0.25
    assert generation.token_agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5
