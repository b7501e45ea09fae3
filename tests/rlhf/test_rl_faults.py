"""The RL loop must not produce garbage silently: one test per fault, named after it.

Each test failed on the code before its fix (or on the bug injected into the code), see the
docstrings: NaN guards, log-ratio/k3 clamps, dual clip, approx_kl, margin units, weights-only
checkpoints, and the PPO wiring bugs the older tests missed (old log-probs, position ids, EOS in
the mask, whitening over padding, sequence KL for the controller, gradient clipping, DPO loss mix).
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from alignflow.config import ParamsError, validate
from alignflow.rlhf import core_algos as ca
from alignflow.training.launcher import NonFiniteLossError

PROMPTS = [[{"role": "user", "content": f"Say something ({i})"}] for i in range(8)]


# ------------------------------------------------------------------ helpers (tiny models)


def ppo_trainer(reward=None, *, grad_clip: float = 1.0, learning_rate: float = 1e-2, **cfg):
    """A PPOTrainer on the 8-token tiny llama with a random (non-zero) LoRA: policy ≠ reference."""
    from peft import LoraConfig, get_peft_model

    from alignflow.config.rlhf import PPOParams
    from alignflow.rlhf.ppo import PPOTrainer, make_value_head
    from tests.rlhf.test_align import concentrated_tiny_model

    torch.manual_seed(0)
    base, tok, target = concentrated_tiny_model(8)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                            init_lora_weights=False))
    reward = reward or (lambda prompts, texts, response_ids: [sum(t == target for t in ids) / max(len(ids), 1)
                                                              for ids in response_ids])
    params = PPOParams(**{"rollout_batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 2, "temperature": 1.0,
                          "missing_eos_penalty": 0.0, **cfg})
    return PPOTrainer(model, tok, make_value_head(model), reward, params, learning_rate=learning_rate,
                      max_new_tokens=6, max_prompt_length=16, seed=0, grad_clip=grad_clip)


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def spy_policy_loss(trainer) -> list[dict]:
    calls: list[dict] = []
    real = trainer.policy_loss

    def spy(old, new, adv, mask, *args, **kwargs):
        calls.append({"old": old.detach().clone(), "new": new.detach().clone(), "adv": adv.detach().clone(),
                      "mask": mask.detach().clone()})
        return real(old, new, adv, mask, *args, **kwargs)

    trainer.policy_loss = spy
    return calls


def spy_rollout(trainer) -> list:
    """The step's rollouts, with a copy of their log-probs as the rollout computed them."""
    rollouts = []
    real = trainer.rollout

    def spy(prompts):
        ro = real(prompts)
        rollouts.append((ro, ro.logprobs.clone()))
        return ro

    trainer.rollout = spy
    return rollouts


# ------------------------------------------------------------------ 1. NaN guards


@pytest.mark.slow
def test_ppo_nan_reward_stops_before_the_update():
    """Before: a NaN score went through GAE into the loss and the weights; the step returned stats."""
    trainer = ppo_trainer(reward=lambda prompts, texts, response_ids: [float("nan") if i == 2 else 1.0
                                                                       for i in range(len(texts))])
    before = trainable(trainer)
    with pytest.raises(NonFiniteLossError, match=r"PPO step 1: reward model: reward non-finite at 1 of 8"):
        trainer.train_step(PROMPTS)
    assert all(torch.equal(before[n], p) for n, p in trainable(trainer).items())


@pytest.mark.slow
def test_ppo_nan_loss_stops_before_the_optimizer_step():
    """Before: a NaN loss/grad norm was stepped into the weights and logged as nothing."""
    trainer = ppo_trainer()
    real = trainer.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    trainer.policy_loss = nan_loss
    before = trainable(trainer)
    with pytest.raises(NonFiniteLossError, match=r"PPO step 1 \(epoch 1, mini-batch 1\): policy_loss = nan.*grad_norm"):
        trainer.train_step(PROMPTS)
    assert all(torch.equal(before[n], p) for n, p in trainable(trainer).items())


@pytest.mark.slow
def test_ppo_stage_with_nan_reward_fails_without_a_policy_or_checkpoint(tmp_path, monkeypatch, tracker):
    """Before: the stage exited 0 and wrote (and would register) a 100% NaN policy."""
    from alignflow.io import write_jsonl
    from alignflow.rlhf import align, ppo
    from tests.rlhf.test_align import make_sft_and_reward, stage_params

    class NaNReward:
        def __call__(self, prompts, responses, **_):
            return [float("nan")] * len(responses)

        def detach(self):
            pass

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(4)])
    monkeypatch.setattr(ppo, "load_ppo_reward", lambda *a, **k: NaNReward())
    params = stage_params(tmp_path, method="ppo", max_steps=1, ppo={"rollout_batch_size": 2, "mini_batch_size": 2})
    with pytest.raises(NonFiniteLossError, match="PPO step 1: reward model: reward non-finite at 2 of 2"):
        align.run(params, tracker)
    assert not (tmp_path / "models/policy").exists()
    assert not list((tmp_path / "ray").rglob("checkpoint-*"))


@pytest.mark.slow
def test_grpo_stage_with_nan_reward_fails_without_a_policy_or_checkpoint(tmp_path, monkeypatch, tracker):
    """Before: TRL counted every NaN score as "unscorable" (advantage 0): the stage exited 0 with a policy."""
    import alignflow.rlhf.judges
    from alignflow.io import write_jsonl
    from alignflow.rlhf import align
    from tests.rlhf.test_align import make_sft_and_reward, stage_params

    monkeypatch.chdir(tmp_path)
    make_sft_and_reward(tmp_path)
    write_jsonl(tmp_path / "data/formatted/prompts_train.jsonl",
                [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Tell me about {i}."}]} for i in range(4)])
    monkeypatch.setattr(alignflow.rlhf.judges, "score_with_reward_model", lambda m, t, p, r, *a: [float("nan")] * len(r))
    params = stage_params(tmp_path, method="grpo", max_steps=2, batch_size=2, max_prompts=2, grpo={"num_generations": 2})
    with pytest.raises(NonFiniteLossError, match=r"step 1: reward model .*: reward non-finite at 4 of 4"):
        align.run(params, tracker)
    assert not (tmp_path / "models/policy").exists()
    assert not list((tmp_path / "ray").rglob("checkpoint-*"))


def test_trl_guard_stops_on_nonfinite_loss_grad_norm_or_weights():
    """Before: only a NaN `loss` stopped a TRL run; a NaN grad norm, reward or weight went into the checkpoint."""
    from torch import nn
    from transformers import TrainerState

    from alignflow.rlhf.align_common import finite_guard_callback

    guard, state = finite_guard_callback(), TrainerState(global_step=3)
    guard.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": 1.0, "clip_ratio": float("nan")})  # unguarded key
    with pytest.raises(NonFiniteLossError, match=r"step 3: grad_norm = nan"):
        guard.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": float("nan")})
    with pytest.raises(NonFiniteLossError, match=r"step 3: reward = inf"):
        guard.on_log(None, state, None, logs={"reward": float("inf")})
    model = nn.Linear(2, 1)
    guard.on_step_end(None, state, None, model=model)
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 3: trainable weight bias"):
        guard.on_step_end(None, state, None, model=model)


def test_trl_reward_function_rejects_nan_scores(monkeypatch):
    """Before: GRPO/RLOO nansum()/mask NaN rewards, so a broken reward model trained on as "unscorable"."""
    import alignflow.models
    import alignflow.rlhf.judges
    from alignflow.rlhf.trl_methods import make_reward_function

    model = SimpleNamespace(eval=lambda: model, requires_grad_=lambda flag: model)
    monkeypatch.setattr(alignflow.models, "load_reward_model", lambda path, device=None: (model, None))
    monkeypatch.setattr(alignflow.rlhf.judges, "score_with_reward_model", lambda *a, **k: [1.0, float("nan")])
    reward = make_reward_function("models/reward")
    with pytest.raises(NonFiniteLossError, match=r"step 5: reward model \(models/reward\): reward non-finite at 1 of 2"):
        reward(prompts=["a", "b"], completions=["x", "y"], trainer_state=SimpleNamespace(global_step=4))


def test_nan_metrics_are_not_dropped_silently(caplog):
    from alignflow.rlhf.align_common import MetricsLogger

    logger = MetricsLogger(rank_zero=True, run_id=None)
    with caplog.at_level(logging.WARNING, logger="alignflow.rlhf.align_common"):
        logger.log({"reward": 1.0, "explained_variance": float("nan")}, step=4)
    assert "step 4: not logged (non-finite): explained_variance=nan" in caplog.text


# ------------------------------------------------------------------ 2. verl's guards, approx_kl


def test_policy_loss_clamps_log_ratio_before_exp():
    """Before: log-ratio 100 → ratio exp(100) = inf in fp32 → inf loss, NaN gradient."""
    old = torch.full((1, 2), -100.0)
    new = torch.zeros(1, 2, requires_grad=True)
    for name in ("ppo_clip", "vanilla_pg"):
        loss, stats = ca.get_policy_loss(name)(old, new, torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2), 0.2)
        loss.backward()
        assert math.isfinite(loss.item()) and math.isfinite(stats["approx_kl"]) and torch.isfinite(new.grad).all()
        new.grad = None


def test_dual_clip_caps_the_loss_of_negative_advantages():
    """ratio 5, ε 0.2: A = −1 → max(5, 1.2) = 5, dual clip c = 3 → min(5, 3) = 3; A = +1 → max(−5, −1.2) = −1.2."""
    old, new = torch.zeros(1, 2), torch.full((1, 2), math.log(5.0))
    adv, mask = torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2)
    loss, _ = ca.clipped_policy_loss(old, new, adv, mask, 0.2)
    assert loss.item() == pytest.approx((5.0 - 1.2) / 2)
    loss, stats = ca.clipped_policy_loss(old, new, adv, mask, 0.2, dual_clip_c=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.2) / 2) and stats["policy_clipfrac_lower"] == pytest.approx(0.5)
    assert validate({"align": {"ppo": {"dual_clip_c": 3}}}).align.ppo.dual_clip_c == 3.0
    with pytest.raises(ParamsError, match="align.ppo.dual_clip_c"):
        validate({"align": {"ppo": {"dual_clip_c": 1.0}}})


def test_k3_kl_estimate_is_clamped_to_10():
    """Before: a log-ratio of 20 gave a per-token k3 of e^20 − 21 ≈ 5e8."""
    kl = ca.kl_penalty(torch.tensor([[0.0, -30.0, 0.0]]), torch.tensor([[30.0, 0.0, 0.0]]), "k3")
    assert kl.tolist() == [[10.0, pytest.approx(10.0), 0.0]]
    assert ca.KL_ESTIMATORS["low_var_kl"] is ca.kl_k3


def test_approx_kl_is_k3_of_kl_old_new():
    """Before: 1/r − 1 + log r (the wrong direction). r = 1.5: (r − 1) − log r = 0.5 − log 1.5 ≈ 0.0945."""
    _, stats = ca.clipped_policy_loss(torch.zeros(1, 2), torch.full((1, 2), math.log(1.5)), torch.ones(1, 2),
                                      torch.tensor([[1, 0]]), 0.2)
    assert stats["approx_kl"] == pytest.approx(0.5 - math.log(1.5), abs=1e-6)
    # unbiased for KL(old‖new) on tokens sampled from the old policy
    gen = torch.Generator().manual_seed(0)
    p_old = torch.softmax(torch.randn(6, generator=gen), 0)
    p_new = torch.softmax(torch.randn(6, generator=gen), 0)
    tokens = torch.multinomial(p_old, 200_000, replacement=True, generator=gen)[None]
    _, stats = ca.clipped_policy_loss(p_old.log()[tokens], p_new.log()[tokens], torch.ones_like(tokens, dtype=torch.float),
                                      torch.ones_like(tokens), 0.2)
    assert stats["approx_kl"] == pytest.approx((p_old * (p_old / p_new).log()).sum().item(), rel=0.03)


# ------------------------------------------------------------------ 3. margin units


def test_rank_margin_is_written_in_logits(tmp_path, monkeypatch, tracker):
    """Before: margin = the judge's score gap (0.7), 10× weaker than the 7 logits it stands for."""
    import alignflow.rlhf.judges as judges
    from alignflow.io import read_jsonl, write_jsonl
    from alignflow.rlhf import rank

    class Judge:
        name, compare_scale = "reference", 0.1

        def score(self, prompt, responses, reference=None, **_):
            return [0.9, 0.5, 0.2]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(judges, "build_judge", lambda *a, **k: Judge())
    write_jsonl(tmp_path / "data/samples/samples.jsonl",
                [{"prompt_id": "p0", "prompt": [{"role": "user", "content": "Q"}], "responses": ["a", "b", "c"],
                  "finished": [True] * 3}])
    params = validate({"rank": {"pairs": "best_vs_worst", "human_weight": 0, "val_fraction": 0.0}})
    metrics = rank.run(params, tracker)
    (pair,) = read_jsonl(tmp_path / "data/prefs/train.jsonl")
    assert pair["margin"] == pytest.approx(7.0) and metrics["mean_margin"] == pytest.approx(7.0)
    assert judges.margin_in_logits(judges.RewardModelJudge.__new__(judges.RewardModelJudge), 0.7) == pytest.approx(0.7)


# ------------------------------------------------------------------ 4. weights-only checkpoints


@pytest.mark.slow
def test_ppo_checkpoint_loads_weights_only_and_resumes(tmp_path, monkeypatch):
    """Before: torch.load(weights_only=False) unpickled whatever the checkpoint held."""
    trainer = ppo_trainer(ppo_epochs=1)
    trainer.train_step(PROMPTS)
    path = trainer.save_checkpoint(tmp_path)
    torch.load(path / "ppo_state.pt", weights_only=True)  # tensors and plain containers only

    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    resumed = ppo_trainer(ppo_epochs=1)
    resumed.load_checkpoint(path)
    assert loads == [True] and resumed.step == 1
    a, b = trainer.train_step(PROMPTS), resumed.train_step(PROMPTS)
    assert b["reward"] == pytest.approx(a["reward"]) and b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ 5. injected PPO bugs


@pytest.mark.slow
def test_old_logprobs_are_computed_once_before_the_ppo_epochs():
    """Injected: old log-probs recomputed after an update (ratio ≡ 1, no clipping, no trust region)."""
    trainer = ppo_trainer(ppo_epochs=2)
    rollouts, calls = spy_rollout(trainer), spy_policy_loss(trainer)
    trainer.train_step(PROMPTS)
    (_, rollout_logprobs), = rollouts
    assert len(calls) == 4  # 2 epochs × 2 mini-batches
    for call in calls:  # every mini-batch row is a row of the rollout's own log-probs
        assert all(any(torch.equal(row, r) for r in rollout_logprobs) for row in call["old"])
    assert not torch.allclose(calls[-1]["new"], calls[-1]["old"], atol=1e-4)  # the policy did move meanwhile


@pytest.mark.slow
def test_position_ids_skip_left_padding():
    """Injected: positions 0..T-1 on left-padded rows (GPT-2's learned positions then shift)."""
    from alignflow.models import load_causal_lm
    from alignflow.rlhf.ppo import policy_forward, position_ids_for

    assert position_ids_for(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    model, tok = load_causal_lm("tiny:gpt2", device="cpu")
    gen = torch.Generator().manual_seed(0)
    short, long = torch.randint(10, 1000, (1, 6), generator=gen), torch.randint(10, 1000, (1, 9), generator=gen)
    ids = torch.cat([torch.cat([torch.full((1, 3), tok.pad_token_id), short], 1), long])
    mask = torch.tensor([[0] * 3 + [1] * 6, [1] * 9])
    with torch.no_grad():
        padded = policy_forward(model.eval(), None, ids, mask, 6, 1.0)[0][0]
        alone = policy_forward(model, None, short, torch.ones_like(short), 3, 1.0)[0][0]
    assert torch.allclose(padded, alone, atol=1e-5), (padded, alone)


@pytest.mark.slow
def test_eos_is_inside_the_response_mask():
    """Injected: the mask stopped before EOS (the score then lands on the token before it)."""
    from alignflow.rlhf.ppo import response_mask_from_ids

    mask, has_eos = response_mask_from_ids(torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9]]), [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]] and has_eos.tolist() == [True, False]
    rewards, _ = ca.shape_token_rewards(torch.tensor([1.0, 2.0]), torch.zeros(2, 5), torch.zeros(2, 5), mask, 0.1)
    assert rewards[0].tolist() == [0, 0, 1.0, 0, 0] and rewards[1, -1] == 2.0
    trainer = ppo_trainer()
    ro = trainer.rollout(PROMPTS)
    last = ca.last_token_index(ro.response_mask)
    finished = ro.input_ids[ro.contains_eos, ro.context_len + last[ro.contains_eos]]
    assert ro.contains_eos.any() and all(t in trainer.eos_ids for t in finished.tolist())
    assert torch.equal(ro.attention_mask[:, ro.context_len:], ro.response_mask)


@pytest.mark.slow
def test_whitened_advantages_ignore_padding():
    """Injected: advantages whitened over padding too (mean/std off, padding gets advantages)."""
    trainer = ppo_trainer(ppo_epochs=1)
    calls = spy_policy_loss(trainer)
    trainer.train_step(PROMPTS)
    adv, mask = torch.cat([c["adv"] for c in calls]), torch.cat([c["mask"] for c in calls])
    assert (mask == 0).any(), "precondition: some responses end before max_new_tokens"
    assert ca.masked_mean(adv, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert ca.masked_var(adv, mask).item() == pytest.approx(1.0, abs=1e-3)
    assert (adv[mask == 0] == 0).all()


@pytest.mark.slow
def test_adaptive_kl_controller_gets_the_sequence_kl():
    """Injected: the per-token KL (mean over tokens) fed to the controller, whose target is nats per response."""
    trainer = ppo_trainer(kl_controller="adaptive", kl_estimator="k1")
    rollouts = spy_rollout(trainer)
    seen = []
    real = trainer.kl_ctl.update
    trainer.kl_ctl.update = lambda kl, n: seen.append(kl) or real(kl, n)
    stats = trainer.train_step(PROMPTS)
    ro, _ = rollouts[0]
    per_token = (ro.logprobs - ro.ref_logprobs) * ro.response_mask
    sequence_kl = per_token.sum(-1).mean().item()
    assert abs(sequence_kl - ca.masked_mean(per_token, ro.response_mask).item()) > 1e-3  # they differ here
    assert seen == [pytest.approx(sequence_kl, rel=1e-5)] and stats["kl"] == pytest.approx(sequence_kl, rel=1e-5)


@pytest.mark.slow
def test_gradients_are_clipped_before_the_optimizer_step():
    """Injected: clip_grad_norm_ removed (the norm still computed and logged)."""
    trainer = ppo_trainer(grad_clip=1e-3)
    norms = []
    real = trainer.optimizer.step

    def step(*a, **k):
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params if p.grad is not None])).item())
        return real(*a, **k)

    trainer.optimizer.step = step
    stats = trainer.train_step(PROMPTS)
    assert stats["grad_norm"] > 1e-2  # clipping had work to do
    assert norms and max(norms) <= 1e-3 * 1.001


def test_dpo_loss_type_and_weights_reach_trl_config(tmp_path):
    """Injected: DPOConfig built without loss_type/loss_weights (TRL then trains plain sigmoid DPO)."""
    from alignflow.rlhf.trl_methods import dpo_config, training_args

    params = validate({"model": {"base": "tiny:llama"},
                       "align": {"dpo": {"beta": 0.2, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}}})
    args = dpo_config(params.align, training_args(params.align, params, str(tmp_path), per_device_batch=2),
                      n_examples=100, per_step=2)
    assert list(args.loss_type) == ["sigmoid", "sft"] and list(args.loss_weights) == [1.0, 0.5] and args.beta == 0.2


def test_pairwise_steps_run_as_micro_batches_without_checkpointing(tmp_path):
    """Before: DPO ran 4 pairs per forward (each padded to the batch's longest) under TRL's default
    gradient checkpointing (every forward recomputed in the backward): 1.3x the step time on CPU."""
    from alignflow.rlhf.trl_methods import dpo_config, training_args

    params = validate({"model": {"base": "tiny:llama"}, "align": {"batch_size": 4, "micro_batch_size": 1}})
    per_forward, forwards = params.align.forward_batch()
    args = dpo_config(params.align, training_args(params.align, params, str(tmp_path), per_device_batch=per_forward,
                                                  grad_accum=forwards), n_examples=100, per_step=4)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)  # still 4 pairs a step
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False
    on = validate({"model": {"base": "tiny:llama"}, "align": {"gradient_checkpointing": True}})
    assert dpo_config(on.align, training_args(on.align, on, str(tmp_path), per_device_batch=4),
                      n_examples=100, per_step=4).activation_checkpointing is True
    # online and KTO batches are not split: GRPO's groups and KTO's KL term need their batch-mates
    for method in ("kto", "grpo"):
        assert validate({"align": {"method": method, "batch_size": 4, "micro_batch_size": 1,
                                   "grad_accum": 2}}).align.forward_batch() == (4, 2)
    with pytest.raises(ParamsError, match=r"align.micro_batch_size: 3 must divide align.batch_size \(4\)"):
        validate({"align": {"batch_size": 4, "micro_batch_size": 3}})


def test_reference_log_probs_are_precomputed_only_when_the_run_sees_the_data_well_over_once():
    """Before: `auto` precomputed at 240 pair-visits of 224 pairs, 3.7 min up front for 0.98 s a pair
    against 0.68 s for a step's own reference forward."""
    from alignflow.rlhf.trl_methods import _precompute

    def auto(steps):
        return _precompute(validate({}).align.dpo, validate({"align": {"max_steps": steps}}).align, 224, 4)

    assert [auto(40), auto(60), auto(90)] == [False, False, True]
    assert _precompute(validate({"align": {"dpo": {"precompute_ref_log_probs": True}}}).align.dpo,
                       validate({}).align, 224, 4)


# ------------------------------------------------------------------ 6. params that fail stages later


def test_greedy_sampling_with_k_above_1_is_rejected_at_validation():
    """Before: sample.temperature=0 with k=4 validated, sampled 4 copies, and rank found only ties."""
    with pytest.raises(ParamsError, match=r"sample.temperature=0 .*sample.k=4"):
        validate({"sample": {"temperature": 0, "k": 4}})
    assert validate({"sample": {"temperature": 0, "k": 1}}).sample.k == 1
    with pytest.raises(ParamsError, match=r"align.best_of_n.n.*sample.temperature=0"):
        validate({"sample": {"temperature": 0, "k": 1}, "align": {"method": "best_of_n"}})
