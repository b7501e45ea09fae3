"""Generation (batched, left-padded, seeded, EOS stop) and the sample stage on tiny:llama."""

from __future__ import annotations

import pytest
import torch

from alignflow.config import validate
from alignflow.io import InputError, read_jsonl, write_jsonl
from alignflow.rlhf import generation, sample

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "A much longer prompt with many more words in it than the first one has."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]


@pytest.fixture(scope="module")
def tiny():
    from alignflow.models import load_causal_lm

    return load_causal_lm("tiny:llama", device="cpu")


def test_left_pad_and_eos_split():
    ids, mask = generation.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    tokens, finished = generation.split_generated(torch.tensor([4, 9, 2, 0, 0]), {2}, 0)
    assert tokens == [4, 9] and finished
    assert generation.split_generated(torch.tensor([4, 9]), {2}, 0) == ([4, 9], False)


def test_batched_generation_matches_one_at_a_time_when_greedy(tiny):
    """Left padding + position ids: a prompt's greedy answer does not depend on its batch-mates."""
    model, tok = tiny
    batched = generation.generate(model, tok, PROMPTS, n=1, max_new_tokens=6, temperature=0.0, batch_size=3,
                                  progress=False)
    single = [generation.generate(model, tok, [p], n=1, max_new_tokens=6, temperature=0.0, progress=False)[0]
              for p in PROMPTS]
    assert batched == single


def test_sampling_is_seeded_and_ordered(tiny):
    model, tok = tiny
    kw = dict(n=3, max_new_tokens=5, temperature=1.0, top_p=1.0, batch_size=4, progress=False)
    a = generation.generate_with_details(model, tok, PROMPTS, seed=7, **kw)
    b = generation.generate_with_details(model, tok, PROMPTS, seed=7, **kw)
    assert [[g.text for g in x] for x in a] == [[g.text for g in x] for x in b]
    assert len(a) == 3 and all(len(x) == 3 for x in a)
    assert all(g.num_tokens <= 5 for x in a for g in x)
    assert any(len({g.text for g in x}) > 1 for x in a)  # k samples differ


def test_eos_ids_include_chatml_end(tiny):
    model, tok = tiny
    assert tok.convert_tokens_to_ids("<|im_end|>") in generation.eos_token_ids(model, tok)


@pytest.mark.parametrize(("wanted", "used"), [("hf", "hf"), ("auto", "openvino")])
def test_sample_stage(tmp_path, monkeypatch, tracker, tiny, wanted, used):
    """auto samples on OpenVINO (installed with the project), the LoRA adapter merged in."""
    from peft import LoraConfig, get_peft_model

    from alignflow.models import save_model_dir

    monkeypatch.chdir(tmp_path)
    model, tok = tiny
    save_model_dir(get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")), tok,
                   "models/sft", {"base": "tiny:llama"})
    write_jsonl("data/formatted/prompts_train.jsonl",
                [{"id": f"p{i}", "prompt": PROMPTS[i % 3], "reference": "Blue.", "task": "t", "source": "s"}
                 for i in range(5)])
    constraints = [{"id": "punctuation:no_comma", "kwargs": {}}]
    write_jsonl("data/formatted/prompts_ifeval_train.jsonl",
                [{"id": f"c{i}-if", "prompt": PROMPTS[i], "constraints": constraints, "task": "t"} for i in range(2)])
    params = validate({"model": {"base": "tiny:llama"},
                       "sample": {"k": 2, "max_new_tokens": 4, "max_prompts": 4, "temperature": 0.9,
                                  "backend": wanted, "constraint_prompts": 1}})
    metrics = sample.run(params, tracker)
    recs = list(read_jsonl("data/samples/samples.jsonl"))
    assert len(recs) == 5 and metrics["responses"] == 10 and metrics["prompts"] == 5
    # the constraint prompt keeps its constraints for rank's verifier judge
    assert recs[-1]["prompt_id"] == "c0-if" and recs[-1]["constraints"] == constraints
    assert all("constraints" not in r for r in recs[:4])
    assert recs[0]["prompt_id"] == "p0" and recs[0]["reference"] == "Blue." and len(recs[0]["responses"]) == 2
    assert recs[0]["gen"] == {"k": 2, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 4, "seed": 42,
                              "model": "models/sft", "backend": used}
    assert len(recs[0]["finished"]) == 2 and metrics["tokens_per_s"] > 0


def test_sample_stage_bad_prompt_names_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl("p.jsonl", [{"id": "a", "prompt": [{"role": "user", "content": "x"}]}, {"id": "b", "prompt": "text"}])
    with pytest.raises(InputError, match=r"p.jsonl:2"):
        sample.load_prompts("p.jsonl")
