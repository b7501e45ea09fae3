"""The OpenVINO back end: auto's first choice on a CPU, falls back, and generates what HF does.

Fidelity is the contract: greedy ids equal HF's, a sampled token's log-prob under the engine equals
HF's log_softmax (so KL and the RL math computed on HF stay valid for engine samples), an adapter
is merged so the engine samples exactly the trained policy, and a conversion is made once.
"""

from __future__ import annotations

import logging

import pytest
import torch

from alignflow.rlhf import generation, ov_engine
from tests.rlhf.conftest import ENGINE_PROMPTS as PROMPTS
from tests.rlhf.conftest import greedy_ids

pytestmark = pytest.mark.skipif(not ov_engine.installed(), reason="openvino-genai is a project dependency")

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_ids_equal_hf_alone_or_batched(arch):
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm(f"tiny:{arch}", device="cpu")
    engine = ov_engine.OVGenerator(f"tiny:{arch}")
    kw = dict(n=1, max_new_tokens=16, temperature=0, progress=False)
    reference = greedy_ids(generation.generate_with_details(model, tok, PROMPTS, batch_size=8, **kw))
    assert all(len(ids) > 0 for ids in reference)
    assert greedy_ids(engine.generate_with_details(PROMPTS, **kw)) == reference
    # one request at a time: continuous batching does not change a row's tokens
    assert [greedy_ids(engine.generate_with_details([p], **kw))[0] for p in PROMPTS[:2]] == reference[:2]


def test_sampled_token_log_probs_equal_hf_log_softmax():
    """The engine samples from the distribution HF computes: its per-token log-probs (T=1, no
    truncation) match HF's log_softmax at each sampled token within 1e-3."""
    from alignflow.models import load_causal_lm
    from alignflow.rlhf.generation import encode_prompts

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = ov_engine.OVGenerator("tiny:llama")
    prompt_ids = encode_prompts(tok, PROMPTS[1:2])[0]
    out = engine.generate_ids([prompt_ids], [(0, 0)], max_new_tokens=12, temperature=1.0, top_p=1.0, seed=3,
                              progress=False, logprobs=True)[0]
    sampled = out.ids
    assert len(set(sampled)) > 1  # really sampled, not a constant
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + sampled])).logits[0].float()
    hf = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    hf_sampled = hf[torch.arange(len(sampled)), torch.tensor(sampled)]
    assert torch.allclose(torch.tensor(out.log_probs), hf_sampled, atol=1e-3)


def test_a_rows_sample_does_not_depend_on_the_rows_beside_it():
    """Per-row seeds (seed, prompt, sample index): continuous batching changes which rows share
    a step, never what a row draws."""
    engine = ov_engine.OVGenerator("tiny:llama")
    kw = dict(n=3, max_new_tokens=6, temperature=1.0, top_p=0.95, seed=7, progress=False)
    together = engine.generate_with_details(PROMPTS, **kw)
    alone = engine.generate_with_details(PROMPTS[:1], **kw)
    assert [g.token_ids for g in alone[0]] == [g.token_ids for g in together[0]]


def test_an_architecture_it_does_not_convert_falls_back_under_auto_only(caplog):
    """GPT-2 is not in CONVERTIBLE: auto (fallback) takes the next engine (CTranslate2 converts
    GPT-2) with a warning; an explicit openvino fails with the param and the reason."""
    from alignflow.config import ParamsError

    with caplog.at_level(logging.WARNING, logger="alignflow.rlhf.generation"):
        gen = generation.make_generator("tiny:gpt2", "openvino", fallback=True, param="eval.backend")
    assert gen.name == "ct2" and "OpenVINO cannot run it" in caplog.text and "model_type 'gpt2'" in caplog.text
    with pytest.raises(ParamsError, match=r"eval.backend: openvino cannot run tiny:gpt2: .*model_type 'gpt2'"):
        generation.make_generator("tiny:gpt2", "openvino", fallback=False, param="eval.backend")


def test_a_trace_openvino_cannot_convert_falls_back_with_the_reason(fresh_cache, monkeypatch, caplog):
    """The failure a transformers release caused (its forward renamed the cache argument, so the
    model built its own empty cache and the trace concatenated onto a 1-d tensor): a real
    OpConversionFailure becomes UnsupportedModel, so auto generates on the next engine and says why."""
    def ignores_the_past(model):
        class NoPast(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, position_ids, past):
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=True)
                return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

        return NoPast()

    monkeypatch.setattr(ov_engine, "_flat_cache_module", ignores_the_past)
    with pytest.raises(generation.UnsupportedModel, match=r"OpenVINO could not convert .* under transformers \d"):
        ov_engine.OVGenerator("tiny:llama")
    with caplog.at_level(logging.WARNING, logger="alignflow.rlhf.generation"):
        gen = generation.make_generator("tiny:llama", "openvino", fallback=True, param="sample.backend")
    assert gen.name == "ct2" and "OpenVINO cannot run it" in caplog.text
    assert not [p for p in fresh_cache.glob("models/ov-*") if p.is_dir()]  # nothing half-converted to reuse
