"""Alignment runs on tiny models: PPO raises a toy reward under its KL target; DPO raises the
preference accuracy on its training pairs; the stage writes the policy, the curve and metrics."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from torch import nn

from alignflow.config import validate
from alignflow.io import write_jsonl

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ PPO on a toy reward


def concentrated_tiny_model(n_tokens: int = 8):
    """tiny:llama whose next-token distribution is limited to `n_tokens` tokens (EOS among them).

    A random model spreads its mass over 49k tokens, so no target token would ever be sampled; a
    logit bias on the output layer gives PPO a few-percent start it can improve on.
    """
    from alignflow.models import load_causal_lm

    base, tok = load_causal_lm("tiny:llama", device="cpu")
    gen = torch.Generator().manual_seed(0)
    allowed = torch.randperm(base.config.vocab_size, generator=gen)[: n_tokens - 1].tolist() + [tok.eos_token_id]
    head = nn.Linear(base.config.hidden_size, base.config.vocab_size, bias=True)
    head.weight = base.lm_head.weight
    with torch.no_grad():
        head.bias.fill_(-30.0)
        head.bias[allowed] = 0.0
    head.bias.requires_grad_(False)
    base.lm_head = head
    return base, tok, allowed[0]


def test_ppo_raises_toy_reward_within_kl_target():
    from peft import LoraConfig, get_peft_model

    from alignflow.config.rlhf import PPOParams
    from alignflow.rlhf.ppo import PPOTrainer, make_value_head

    torch.manual_seed(0)
    base, tok, target = concentrated_tiny_model(8)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))

    def fraction_of_target(prompts, texts, response_ids):
        return [sum(t == target for t in ids) / max(len(ids), 1) for ids in response_ids]

    target_kl = 4.0
    cfg = PPOParams(rollout_batch_size=16, mini_batch_size=16, ppo_epochs=4, init_kl_coef=0.05, target_kl=target_kl,
                    kl_horizon=1000, temperature=1.0, missing_eos_penalty=0.0)
    trainer = PPOTrainer(model, tok, make_value_head(model), fraction_of_target, cfg, learning_rate=3e-3,
                         max_new_tokens=8, max_prompt_length=32, seed=0)
    prompts = [[{"role": "user", "content": f"Say something ({i})"}] for i in range(8)]
    history = []
    for step in range(12):
        rng = random.Random(step)
        history.append(trainer.train_step([rng.choice(prompts) for _ in range(16)]))
    first = sum(h["reward"] for h in history[:2]) / 2
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert last > first + 0.15, [round(h["reward"], 3) for h in history]
    assert all(h["kl"] < target_kl for h in history), [round(h["kl"], 3) for h in history]
    assert history[-1]["kl"] > 0.05  # it did move away from the reference (the adapter switched off)
    # Below its target the adaptive controller loosens the penalty.
    assert trainer.kl_ctl.value < cfg.init_kl_coef


# ------------------------------------------------------------------ stage fixtures


def make_sft_and_reward(root):
    """models/sft (a LoRA on tiny:llama) and models/reward (a LoRA + score head on the SFT weights)."""
    from peft import LoraConfig, get_peft_model

    from alignflow.models import load_causal_lm, load_reward_model, save_model_dir

    torch.manual_seed(0)
    base, tok = load_causal_lm("tiny:llama", device="cpu")
    sft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                          init_lora_weights=False))  # non-zero: SFT differs from the base
    save_model_dir(sft, tok, root / "models/sft", {"base": "tiny:llama", "stage": "sft"})
    rm, rtok = load_reward_model(str(root / "models/sft"), device="cpu")
    rm = get_peft_model(rm, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS",
                                       init_lora_weights=False))
    save_model_dir(rm, rtok, root / "models/reward", {"base": "models/sft", "kind": "reward", "stage": "reward"})


def stage_params(tmp_path, **align):
    return validate({
        "model": {"base": "tiny:llama"},
        "ray": {"storage_path": str(tmp_path / "ray")},
        "tracking": {"log_models": False, "register_models": False},
        "sample": {"temperature": 0.8},
        "align": {"max_length": 96, "max_prompt_length": 48, "max_new_tokens": 8, "save_steps": 1,
                  "lora": {"r": 4, "alpha": 8}, **align},
    })


def read_curve(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def seq_logps(model, tok, prompt, completion):
    """Sum of log-probs of the completion's tokens after the chat-templated prompt."""
    p = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + completion, tokenize=False)
    p_ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[p_ids.shape[1] - 1 :].sum().item()


def preference_accuracy(model, tok, pairs):
    return sum(seq_logps(model, tok, r["prompt"], r["chosen"]) > seq_logps(model, tok, r["prompt"], r["rejected"])
               for r in pairs) / len(pairs)


# ------------------------------------------------------------------ DPO through the stage


PAIRWISE_PARAMS = {
    "dpo": {"dpo": {"beta": 0.1, "precompute_ref_log_probs": True}},
    "orpo": {"orpo": {"beta": 0.1}},
    "simpo": {"simpo": {"beta": 2.0, "gamma": 0.5}},
}


def test_length_meter_reads_dpo_and_orpo_batches():
    """DPO's batches carry one completion mask; ORPO/CPO pad each side on its own (other widths)."""
    from alignflow.rlhf.align_common import LengthMeter

    batches = iter([
        {"completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])},
        {"chosen_labels": torch.tensor([[-100, 5, 6, -100]]), "rejected_labels": torch.tensor([[-100, 7, 8, 9, 9, -100]])},
    ])
    meter = LengthMeter(lambda features: next(batches))
    meter([]), meter([])
    meter.consume(1)
    assert meter.take_mean() == 2.5
    meter.consume(1)
    assert meter.take_mean() == 3.0  # (2 + 4) / 2


def test_group_by_length_batches_pairs_of_similar_length():
    """Every pair once per epoch, in batches that pad to fewer tokens than a random order's."""
    import random
    from types import SimpleNamespace

    from alignflow.rlhf.align_common import example_tokens, group_by_length

    assert example_tokens({"prompt_ids": [1] * 5, "chosen_ids": [2] * 3, "rejected_ids": [3] * 7, "x": "y"}) == 12
    assert example_tokens({"prompt_input_ids": [1] * 4, "completion_input_ids": [2] * 6}) == 10  # KTO/ORPO names
    rng = random.Random(0)
    rows = [{"prompt_ids": [0] * rng.randint(10, 60), "chosen_ids": [0] * rng.randint(5, 90),
             "rejected_ids": [0] * rng.randint(5, 90)} for _ in range(200)]
    trainer = SimpleNamespace(train_dataset=rows)
    assert group_by_length(trainer, batch_size=4, seed=1)
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(200))

    def padded(indices):
        return sum(max(example_tokens(rows[i]) for i in indices[k:k + 4]) for k in range(0, 200, 4))

    shuffled = list(range(200))
    rng.shuffle(shuffled)
    assert padded(order) < 0.85 * padded(shuffled)
    assert not group_by_length(SimpleNamespace(train_dataset=[{"prompt": "text"}]), batch_size=4, seed=1)


@pytest.mark.parametrize("method", sorted(PAIRWISE_PARAMS))
def test_pairwise_stage_raises_preference_accuracy(method, tmp_path, monkeypatch, tracker):
    """DPO, ORPO and SimPO each move their own objective: the policy prefers the chosen answers."""
    from alignflow.models import load_causal_lm
    from alignflow.rlhf import align

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    words = ["apple", "river", "stone", "cloud", "green", "music", "light", "paper"]
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Name a word ({i})."}],
              "chosen": [{"role": "assistant", "content": f"{w} is good"}],
              "rejected": [{"role": "assistant", "content": f"{w} was bad"}], "margin": 0.5}
             for i, w in enumerate(words)]
    write_jsonl(tmp_path / "data/prefs/train.jsonl", pairs)
    sft, tok = load_causal_lm("models/sft", device="cpu")
    before = preference_accuracy(sft, tok, pairs)

    # length-bucketed batches, each step's 4 pairs in 2 forwards of 2: both wired
    params = stage_params(tmp_path, method=method, max_steps=8, batch_size=4, micro_batch_size=2, learning_rate=5e-3,
                          group_by_length=True, **PAIRWISE_PARAMS[method])
    metrics = align.run(params, tracker)

    policy, ptok = load_causal_lm("models/policy", device="cpu")
    after = preference_accuracy(policy, ptok, pairs)
    assert after >= 0.875 and after > before, (before, after)
    meta = json.loads((tmp_path / "models/policy/alignflow_model.json").read_text())
    assert meta["adapter"] and meta["base"] == "models/sft" and meta["method"] == method
    assert metrics["steps"] == 8 and metrics["accuracy_last"] >= metrics["accuracy_first"]
    assert metrics["reward_last"] > metrics["reward_first"]  # the method's own implicit reward margin grew
    curve = read_curve(tmp_path / "plots/align_curve.csv")
    assert len(curve) >= 8 and {"reward", "kl", "entropy", "response_length"} <= set(curve[0])
    assert all(row["reward"] and row["response_length"] for row in curve[1:])
    if method == "dpo":  # the reference-free methods have no reference to measure KL or entropy against
        assert all(row["kl"] and row["entropy"] for row in curve[1:])


# ------------------------------------------------------------------ PPO through the stage


def test_ppo_stage_shares_the_base(tmp_path, monkeypatch, tracker):
    from alignflow.rlhf import align

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(6)])
    params = stage_params(tmp_path, method="ppo", max_steps=2, ppo={"rollout_batch_size": 4, "mini_batch_size": 2})
    metrics = align.run(params, tracker)
    assert metrics["reward_model_shared_base"] is True  # reward LoRA on the policy's base, not a 2nd model
    assert metrics["steps"] == 2
    assert (tmp_path / "models/policy/value_head.safetensors").exists()
    saved = json.loads((tmp_path / "models/policy/adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM"
    assert not (tmp_path / "models/policy/reward").exists()  # the reward adapter is not part of the policy
    curve = read_curve(tmp_path / "plots/align_curve.csv")
    assert [r["step"] for r in curve] == ["1", "2"] and all(r["kl"] and r["reward"] for r in curve)


def test_ppo_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A killed run's checkpoint (adapter, value head, optimizer, β, step) is picked up again."""
    from alignflow.config.rlhf import PPOParams
    from alignflow.rlhf.ppo import PPOTrainer, make_value_head
    from peft import LoraConfig, get_peft_model

    base, tok, target = concentrated_tiny_model()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    reward = lambda prompts, texts, response_ids: [float(len(ids)) for ids in response_ids]  # noqa: E731
    cfg = PPOParams(rollout_batch_size=4, mini_batch_size=2, ppo_epochs=1)
    kwargs = dict(learning_rate=1e-3, max_new_tokens=4, max_prompt_length=16)
    trainer = PPOTrainer(model, tok, make_value_head(model), reward, cfg, **kwargs)
    prompts = [[{"role": "user", "content": "hi"}]] * 4
    trainer.train_step(prompts)
    path = trainer.save_checkpoint(tmp_path)
    assert (path / "trainer_state.json").exists() and path.name == "checkpoint-1"

    fresh = get_peft_model(concentrated_tiny_model()[0],
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    resumed = PPOTrainer(fresh, tok, make_value_head(fresh), reward, cfg, **kwargs)
    resumed.load_checkpoint(path)
    assert resumed.step == 1 and resumed.kl_ctl.value == trainer.kl_ctl.value
    a = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    b = {k: v for k, v in resumed.model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shared_base_reward_scores_like_the_reward_model(tmp_path, monkeypatch):
    """The reward LoRA applied as a second adapter on the policy's base gives the reward model's scores."""
    from alignflow.models import load_reward_model, resolve_spec
    from alignflow.rlhf.judges import score_with_reward_model
    from alignflow.rlhf.ppo import SharedBaseReward, build_policy, can_share_base

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    base_dir = resolve_spec("models/sft")
    assert can_share_base("models/reward", base_dir)
    policy, tok, _ = build_policy(base_dir, stage_params(tmp_path), device="cpu")
    shared = SharedBaseReward(policy, tok, "models/reward")
    prompts = [[{"role": "user", "content": "Hello there"}], [{"role": "user", "content": "What is 2+2? Explain."}]]
    responses = ["Hi! How can I help?", "It is four, because two plus two makes four."]
    model, rtok = load_reward_model("models/reward", device="cpu")
    assert shared(prompts, responses) == pytest.approx(score_with_reward_model(model, rtok, prompts, responses), abs=1e-5)
    assert policy.active_adapter == "default"  # back on the policy adapter, the reward adapter frozen
    assert not any(p.requires_grad for n, p in policy.named_parameters() if ".reward." in n)
    assert any(p.requires_grad for n, p in policy.named_parameters() if ".default." in n)


@pytest.mark.parametrize("method", ["kto", "grpo", "rloo", "best_of_n"])
def test_other_methods_run_through_the_stage(method, tmp_path, monkeypatch, tracker):
    """One short run each: a policy record, a curve with the standard columns, metrics."""
    from alignflow.rlhf import align

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(4)])
    write_jsonl(tmp_path / "data/prefs/kto.jsonl",
                [{"prompt": [{"role": "user", "content": f"Q{i}"}],
                  "completion": [{"role": "assistant", "content": "a good answer" if i % 2 else "bad"}],
                  "label": bool(i % 2)} for i in range(4)])
    params = stage_params(tmp_path, method=method, max_steps=1, batch_size=2, max_prompts=2,
                          best_of_n={"n": 2}, grpo={"num_generations": 2}, rloo={"num_generations": 2})
    metrics = align.run(params, tracker)
    meta = json.loads((tmp_path / "models/policy/alignflow_model.json").read_text())
    assert meta["method"] == method
    curve = read_curve(tmp_path / "plots/align_curve.csv")
    assert curve and curve[0]["reward"] != "" and curve[0]["response_length"] != ""
    for column in ("reward", "kl"):  # what `dvc plots` draws: the steps that logged it, no empty cell
        plotted = read_curve(tmp_path / f"plots/align_{column}.csv")
        assert plotted and all(row[column] for row in plotted), (column, plotted)
    if method == "best_of_n":
        assert meta["kind"] == "best_of_n" and meta["n"] == 2 and metrics["kl_last"] == pytest.approx(0.1931, abs=1e-3)
    else:
        assert meta["adapter"] and metrics["steps"] == 1 and curve[0]["kl"] != "" and curve[0]["entropy"] != ""


def test_dpo_trains_on_the_chosen_sources_with_a_loss_mix(tmp_path, monkeypatch, tracker):
    """align.dpo.sources keeps judge pairs only; loss_type [sigmoid, sft] (RPO) runs through TRL."""
    from alignflow.rlhf import align

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    judge = [{"prompt": [{"role": "user", "content": f"Q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "assistant", "content": "no"}], "source": "judge:reference"} for i in range(3)]
    human = [{**r, "source": "hh_rlhf_harmless"} for r in judge[:2]]
    write_jsonl(tmp_path / "data/prefs/train.jsonl", judge + human)
    params = stage_params(tmp_path, method="dpo", max_steps=1, batch_size=2,
                          dpo={"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "sources": ["judge"]})
    metrics = align.run(params, tracker)
    assert metrics["train_examples"] == 3 and metrics["steps"] == 1


# ------------------------------------------------------------------ ReST: Grow + Improve rounds


def test_rest_selection_keeps_the_rising_quantile():
    from alignflow.rlhf.rest import round_quantile, select, threshold_at

    assert threshold_at([0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert [round_quantile([0.5, 0.75], r) for r in (1, 2, 3)] == [0.5, 0.75, 0.75]
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    responses = [["x", "y", " "], ["z", "w", "v"]]
    scores = [[3.0, 1.0, 9.0], [2.0, 5.0, 4.0]]
    kept = select(prompts, responses, scores, threshold=2.0)
    assert [k["completion"][0]["content"] for k in kept] == ["x", "w", "v", "z"]  # the empty one never trains
    raft = select(prompts, responses, scores, threshold=2.0, best_per_prompt=True)
    assert [(k["prompt"][0]["content"], k["score"]) for k in raft] == [("a", 3.0), ("b", 5.0)]


def test_rest_is_refused_on_several_workers():
    from alignflow.config import ParamsError

    with pytest.raises(ParamsError, match=r"align.method: rest runs on one worker.*ray.num_workers"):
        validate({"align": {"method": "rest"}, "ray": {"num_workers": 2}})


def test_rest_stage_trains_on_what_it_keeps_and_resumes_by_round(tmp_path, monkeypatch, tracker):
    """Two rounds on the tiny model: the samples the reward model kept become likelier under the
    policy than under SFT; a run killed in round 2 resumes there without growing round 1 again."""
    from alignflow.models import load_causal_lm
    from alignflow.rlhf import align, rest

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(4)])
    params = stage_params(tmp_path, method="rest", batch_size=2, learning_rate=2e-2, max_new_tokens=6,
                          rest={"rounds": 2, "k": 3, "quantiles": [0.5, 0.75], "steps_per_round": 4})
    params.sample.backend = "hf"
    grown, kept, real_grow, real_improve = [], [], rest.grow, rest.improve

    def grow(policy_dir, prompts, params, seed):
        grown.append(seed - params.seed)  # the round
        return real_grow(policy_dir, prompts, params, seed)

    def improve(model, tok, samples, params, round_dir, round_index):
        if grown == [1, 2]:
            raise RuntimeError("killed in round 2")
        kept.extend(samples)
        return real_improve(model, tok, samples, params, round_dir, round_index)

    monkeypatch.setattr(rest, "grow", grow)
    monkeypatch.setattr(rest, "improve", improve)
    with pytest.raises(Exception, match="killed in round 2"):
        align.run(params, tracker)
    metrics = align.run(params, tracker)
    assert grown == [1, 2, 2]  # round 1 finished before the kill: its checkpoint is not grown again
    assert metrics["steps"] == 2 and metrics["method"] == "rest"
    curve = read_curve(tmp_path / "plots/align_curve.csv")
    assert [row["step"] for row in curve] == ["1", "2"] and all(row["reward"] and row["loss"] for row in curve)
    meta = json.loads((tmp_path / "models/policy/alignflow_model.json").read_text())
    assert meta["method"] == "rest" and meta["adapter"]

    sft, tok = load_causal_lm("models/sft", device="cpu")
    policy, ptok = load_causal_lm("models/policy", device="cpu")
    assert kept and all(k["score"] >= metrics["threshold_last"] for k in kept[-3:])
    gain = [seq_logps(policy, ptok, k["prompt"], k["completion"]) - seq_logps(sft, tok, k["prompt"], k["completion"])
            for k in kept]
    assert sum(gain) / len(gain) > 0.5, gain  # Improve: what the reward model kept became likelier


# ------------------------------------------------------------------ verifiable rewards (align.reward)


def test_verifier_reward_scores_the_share_of_constraints_and_sums_with_the_reward_model():
    from alignflow.rlhf.online_rewards import combined, constraint_index, verifier_reward

    checked = [{"id": "punctuation:no_comma", "kwargs": {}}, {"id": "change_case:english_lowercase", "kwargs": {}}]
    records = [{"prompt": [{"role": "user", "content": "Say hi. No commas; lowercase."}], "constraints": checked},
               {"prompt": [{"role": "user", "content": "Say hi."}]}]
    prompts = [r["prompt"] for r in records]
    verifier = verifier_reward(constraint_index(records), weight=2.0)
    assert verifier.__name__ == "verifier"  # TRL logs rewards/verifier/mean by the function's name
    assert verifier(prompts * 2, ["hi there", "x", "Hi there", "x"]) == [2.0, None, 1.0, None]
    assert verifier(prompts[:1], [[{"role": "assistant", "content": "Hi, there"}]]) == [0.0]  # TRL's message form
    rm = lambda prompts, responses, **_: [10.0] * len(responses)  # noqa: E731
    assert combined(rm, verifier)(prompts, ["hi there", "hi there"]) == [12.0, 10.0]
    with pytest.raises(ValueError, match="without constraints"):
        combined(None, verifier)(prompts, ["hi there", "hi there"])


def test_verifier_needs_constraint_prompts_and_an_online_method():
    with pytest.raises(ValueError, match="constraint_prompts"):
        validate({"align": {"method": "grpo", "reward": "verifier"}})
    with pytest.raises(ValueError, match="online methods"):
        validate({"align": {"method": "dpo", "reward": "sum", "constraint_prompts": 4}})


@pytest.mark.parametrize("method,reward", [("grpo", "verifier"), ("ppo", "sum")])
def test_online_methods_train_on_verifiable_rewards(method, reward, tmp_path, monkeypatch, tracker):
    """GRPO on the checkers alone (no reward model needed), PPO on the reward model + checkers."""
    from alignflow.rlhf import align

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    if reward == "verifier":
        import shutil

        shutil.rmtree(tmp_path / "models/reward")  # RLVR alone: no reward model is read
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(4)])
    write_jsonl(tmp_path / "data/formatted/prompts_ifeval_train.jsonl",
                [{"id": f"c{i}-if", "prompt": [{"role": "user", "content": f"Name {i} colours without commas."}],
                  "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]} for i in range(4)])
    params = stage_params(tmp_path, method=method, max_steps=2, batch_size=2, reward=reward, constraint_prompts=4,
                          grpo={"num_generations": 2}, ppo={"rollout_batch_size": 4, "mini_batch_size": 2})
    metrics = align.run(params, tracker)
    assert metrics["steps"] == 2
    curve = read_curve(tmp_path / "plots/align_curve.csv")
    rewards = [float(r["reward"]) for r in curve if r["reward"]]
    assert rewards
    if reward == "verifier":  # the share of one constraint followed: 0 or 1 per sample
        assert all(0.0 <= r <= 1.0 for r in rewards)
    else:
        assert metrics["reward_model_shared_base"] is True
