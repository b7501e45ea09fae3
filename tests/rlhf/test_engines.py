"""What every CPU engine (OpenVINO, CTranslate2) promises, checked on each against HF.

Fidelity is the contract: seeded samples, EOS reported as HF reports it, an adapter merged so the
engine samples exactly the trained policy, a conversion made once per weights, the embedded
model's greedy tokens, and (CTranslate2) log-prob scoring equal to HF's (eval's KL). Engine-specific checks
(greedy ids per architecture, per-token sampling log-probs, fallbacks) are in test_<engine>_engine.py.
"""

from __future__ import annotations

import pytest
import torch

from alignflow.rlhf import ct2_engine, engine_common, generation, ov_engine
from tests.rlhf.conftest import ENGINE_PROMPTS as PROMPTS
from tests.rlhf.conftest import greedy_ids

ENGINES = [pytest.param(name, marks=pytest.mark.skipif(not module.installed(), reason=f"{name}: a project dependency"))
           for name, module in (("openvino", ov_engine), ("ct2", ct2_engine))]
MODULES = {"openvino": ov_engine, "ct2": ct2_engine}
PREFIX = {"openvino": "ov-", "ct2": "ct2-"}

def make(name: str, ref: str):
    return ov_engine.OVGenerator(ref) if name == "openvino" else ct2_engine.CT2Generator(ref)


@pytest.mark.parametrize("name", ENGINES)
def test_sampling_is_seeded_and_draws_n_distinct_samples(name):
    engine = make(name, "tiny:llama")
    kw = dict(n=3, max_new_tokens=6, temperature=1.0, top_p=0.95, progress=False)
    a = engine.generate_with_details(PROMPTS, seed=7, **kw)
    b = engine.generate_with_details(PROMPTS, seed=7, **kw)
    c = engine.generate_with_details(PROMPTS, seed=8, **kw)
    ids = [[g.token_ids for g in gens] for gens in a]
    assert ids == [[g.token_ids for g in gens] for gens in b]
    assert ids != [[g.token_ids for g in gens] for gens in c]
    assert len(a) == len(PROMPTS) and all(len(gens) == 3 for gens in a)
    assert any(len({tuple(g.token_ids) for g in gens}) > 1 for gens in a)
    assert all(g.num_tokens == len(g.token_ids) + int(g.finished) <= 6 for gens in a for g in gens)


@pytest.mark.parametrize("name", ENGINES)
def test_eos_stops_a_row_and_is_reported_like_hf(name):
    """A row that emits EOS ends there, finished=True, the EOS counted but not in the text."""
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = make(name, "tiny:llama")
    reference = generation.generate_with_details(model, tok, PROMPTS, n=1, max_new_tokens=16, temperature=0,
                                                 progress=False)
    # Declare the first new id the greedy answer emits after its first token the EOS, for both sides.
    row, cut = next((r, i) for r, gens in enumerate(reference) for i in range(1, len(gens[0].token_ids))
                    if gens[0].token_ids[i] not in gens[0].token_ids[:i])
    first = reference[row][0].token_ids
    stop = first[cut]
    engine.eos_ids = [stop]
    model.generation_config.eos_token_id = stop
    tok_eos = tok.eos_token_id
    tok.eos_token_id = stop
    try:
        ours = engine.generate_with_details(PROMPTS, n=1, max_new_tokens=16, temperature=0, progress=False)
        hf = generation.generate_with_details(model, tok, PROMPTS, n=1, max_new_tokens=16, temperature=0,
                                              progress=False)
    finally:
        tok.eos_token_id = tok_eos
    assert ours[row][0].finished and ours[row][0].token_ids == first[:cut]
    assert [(g[0].token_ids, g[0].finished, g[0].num_tokens) for g in ours] == \
        [(g[0].token_ids, g[0].finished, g[0].num_tokens) for g in hf]


@pytest.mark.parametrize("name", ENGINES)
def test_lora_adapter_is_merged_so_the_engine_samples_the_trained_policy(name, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from alignflow.models import load_causal_lm, save_model_dir

    monkeypatch.chdir(tmp_path)
    base, tok = load_causal_lm("tiny:llama", device="cpu")
    torch.manual_seed(0)
    # init_lora_weights=False: a random B, so the adapter really changes the outputs
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    save_model_dir(peft, tok, "models/sft", {"base": "tiny:llama"})
    trained, ttok = load_causal_lm("models/sft", device="cpu")
    kw = dict(n=1, max_new_tokens=12, temperature=0, progress=False)
    want = greedy_ids(generation.generate_with_details(trained, ttok, PROMPTS, **kw))
    base_ids = greedy_ids(generation.generate_with_details(*load_causal_lm("tiny:llama", device="cpu"), PROMPTS, **kw))
    got = greedy_ids(make(name, "models/sft").generate_with_details(PROMPTS, **kw))
    assert got == want and got != base_ids


@pytest.mark.parametrize("name", ENGINES)
def test_a_conversion_is_made_once_per_weights(name, fresh_cache, monkeypatch):
    calls = []
    module = MODULES[name]
    real = module.convert
    monkeypatch.setattr(module, "convert", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    first = make(name, "tiny:llama")
    engine_common._DIGESTS.clear()  # a new process: the digest is recomputed, the conversion reused
    second = make(name, "tiny:llama")
    assert len(calls) == 1 and first.model_dir == second.model_dir
    assert first.model_dir.parent == fresh_cache / "models" and first.model_dir.name.startswith(PREFIX[name])
    make(name, "tiny:qwen2")  # other weights, another conversion
    assert len(calls) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGINES)
def test_embedded_default_agrees_with_hf_greedy(name):
    """The shipped SmolLM2-135M: greedy token agreement with HF >= 0.98 on a fixed prompt set
    (float32 kernels differ in summation order; a near-tie may flip, and then the rest diverges)."""
    from alignflow.models import load_causal_lm

    spec = "embedded:smollm2-135m-instruct"
    prompts = [[{"role": "user", "content": q}] for q in (
        "What is the capital of France?", "Give me two tips for sleeping better.", "Explain photosynthesis briefly.",
        "Write a haiku about rain.", "How do I boil an egg?", "What is 12 times 7?")]
    model, tok = load_causal_lm(spec, device="cpu")
    kw = dict(n=1, max_new_tokens=32, temperature=0, batch_size=8, progress=False)
    reference = greedy_ids(generation.generate_with_details(model, tok, prompts, **kw))
    ours = greedy_ids(make(name, spec).generate_with_details(prompts, **kw))
    assert generation.token_agreement(reference, ours) >= 0.98


@pytest.mark.parametrize("name", [e for e in ENGINES if e.values[0] == "ct2"])  # OpenVINO has no scorer: eval uses HF
def test_engine_scores_completions_like_hf_with_the_same_truncation(name):
    """eval's KL and implicit accuracy on the engine: the same right-aligned per-token arrays as
    the HF scorer, also when max_length cuts the prompt (and once the completion) short."""
    from alignflow.evaluation import scoring
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = make(name, "tiny:llama")
    prompts = scoring.prompt_ids(tok, PROMPTS)
    completions = scoring.response_ids(tok, ["Blue.", "A longer answer with several words in it.", "", "one two",
                                             "Because the sky scatters blue light more than red light."])
    for max_length in (512, 24, 6):
        hf = scoring.completion_logprobs(model, tok, prompts, completions, batch_size=2, max_length=max_length)
        ours = scoring.engine_completion_logprobs(engine, prompts, completions, batch_size=2, max_length=max_length)
        assert (ours[1] == hf[1]).all(), max_length
        assert abs(ours[0] - hf[0]).max() < 1e-3, max_length
