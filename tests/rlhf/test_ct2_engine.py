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

pytestmark = pytest.mark.skipif(not ct2_engine.installed(), reason="ctranslate2 is a project dependency")

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer prompt with many more words in it than the first one has."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Count: one two three four five six"}],
    [{"role": "user", "content": "Why?"}],
]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty conversion cache (the tiny models are rebuilt there too, in a second)."""
    monkeypatch.setenv("ALIGNFLOW_CACHE", str(tmp_path / "cache"))
    ct2_engine._DIGESTS.clear()
    return tmp_path / "cache"


def greedy_ids(gens) -> list[list[int]]:
    return [g[0].token_ids for g in gens]


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


def test_sampling_is_seeded_and_draws_n_distinct_samples():
    engine = ct2_engine.CT2Generator("tiny:llama")
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


def test_eos_stops_a_row_and_is_reported_like_hf():
    """A row that emits EOS ends there, finished=True, the EOS counted but not in the text."""
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = ct2_engine.CT2Generator("tiny:llama")
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


def test_lora_adapter_is_merged_so_the_engine_samples_the_trained_policy(tmp_path, monkeypatch):
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
    got = greedy_ids(ct2_engine.CT2Generator("models/sft").generate_with_details(PROMPTS, **kw))
    assert got == want and got != base_ids


def test_a_conversion_is_made_once_per_weights(fresh_cache, monkeypatch):
    calls = []
    real = ct2_engine.convert
    monkeypatch.setattr(ct2_engine, "convert", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    first = ct2_engine.CT2Generator("tiny:llama")
    ct2_engine._DIGESTS.clear()  # a new process: the digest is recomputed, the conversion reused
    second = ct2_engine.CT2Generator("tiny:llama")
    assert len(calls) == 1 and first.model_dir == second.model_dir
    assert first.model_dir.parent == fresh_cache / "models" and first.model_dir.name.startswith("ct2-")
    ct2_engine.CT2Generator("tiny:qwen2")  # other weights, another conversion
    assert len(calls) == 2


def test_token_agreement_counts_up_to_the_first_divergence():
    assert generation.token_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert generation.token_agreement([[1, 2, 3, 4]], [[1, 9, 3, 4]]) == 0.25
    assert generation.token_agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5


@pytest.mark.slow
def test_embedded_default_agrees_with_hf_greedy():
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
    ours = greedy_ids(ct2_engine.CT2Generator(spec).generate_with_details(prompts, **kw))
    assert generation.token_agreement(reference, ours) >= 0.98


def test_engine_scores_completions_like_hf_with_the_same_truncation():
    """eval's KL and implicit accuracy on the engine: the same right-aligned per-token arrays as
    the HF scorer, also when max_length cuts the prompt (and once the completion) short."""
    from alignflow.evaluation import scoring
    from alignflow.models import load_causal_lm

    model, tok = load_causal_lm("tiny:llama", device="cpu")
    engine = ct2_engine.CT2Generator("tiny:llama")
    prompts = scoring.prompt_ids(tok, PROMPTS)
    completions = scoring.response_ids(tok, ["Blue.", "A longer answer with several words in it.", "", "one two",
                                             "Because the sky scatters blue light more than red light."])
    for max_length in (512, 24, 6):
        hf = scoring.completion_logprobs(model, tok, prompts, completions, batch_size=2, max_length=max_length)
        ours = scoring.engine_completion_logprobs(engine, prompts, completions, batch_size=2, max_length=max_length)
        assert (ours[1] == hf[1]).all(), max_length
        assert abs(ours[0] - hf[0]).max() < 1e-3, max_length
