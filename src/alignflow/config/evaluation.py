"""Params of the eval stage: what is generated and scored, and the promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignflow.config.base import Section


class GateParams(Section):
    """The candidate becomes `champion` only when all checks hold (against the champion, or SFT)."""

    # Win rate of the candidate under the gate's judge, ties counting half. A win rate from a few
    # dozen prompts is noisy: by default the lower end of its 95% bootstrap CI must reach it, so a
    # candidate is promoted on evidence that it is better, not on a lucky draw.
    min_winrate: float = Field(0.5, ge=0.0, le=1.0)
    winrate_bound: Literal["ci_low", "point"] = Field("ci_low", description="what min_winrate applies to")
    # The gate's judge: null = eval.judge (reference or llm, the independent judge of the win
    # rates); verifier = IFEval's checkers on the constraint prompts (the share of constraints
    # followed, per prompt). The reward model never promotes: it is what the policy optimized.
    judge: Literal["reference", "llm", "verifier"] | None = None
    # The lower end of the 95% CI of the candidate's IFEval strict-accuracy gain over the baseline
    # must reach this (null = no IFEval check); e.g. 0.0: not worse beyond noise.
    min_ifeval_delta: float | None = Field(None, ge=-1.0, le=1.0)
    # KL(candidate ‖ SFT) in nats per response, on the candidate's own samples. k1 (the mean
    # log-ratio) by default: k3 is dominated by the few tokens SFT rates far above the policy
    # (a DPO run: k3 158 against k1 9.7; a SimPO run: 3,391 against 9.2).
    max_kl: float = Field(25.0, ge=0.0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    # Largest allowed drop of the refusal rate on harmful prompts, and rise of the
    # over-refusal rate on benign prompts, vs the baseline (absolute, in [0, 1]).
    max_safety_regression: float = Field(0.1, ge=0.0, le=1.0)
    # `alignflow repro --exp` (a sweep) moves `champion` only when this is true; plain
    # `dvc exp run` never does (run `alignflow promote` in the workspace to promote its result).
    promote_in_experiments: bool = False


class EvalParams(Section):
    # Benign held-out prompts (prompt records with references). The format stage also writes
    # data/formatted/eval_prompts.jsonl: the decontaminated eval set, another good choice.
    benign_prompts: str = "data/formatted/prompts_test.jsonl"
    max_prompts: int = Field(48, ge=1, description="held-out prompts (prompts_test) generated per model")
    max_harmful_prompts: int = Field(24, ge=0, description="held-out harmful prompts (safety)")
    max_pairs: int = Field(64, ge=0, description="held-out human preference pairs (accuracy)")
    # Verifiable-constraint prompts (format's prompts_ifeval_test): IFEval strict/loose accuracy per model.
    ifeval_prompts: str = "data/formatted/prompts_ifeval_test.jsonl"
    max_ifeval_prompts: int = Field(32, ge=0, description="constraint prompts generated per model (0 = none)")
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.7, ge=0.0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    batch_size: int = Field(16, ge=1, description="sequences per generate() batch (and reward-model scoring)")
    # Log-probs (KL, implicit accuracy) are compute-bound on a CPU: rows padded to a batch's longest
    # are wasted FLOPs. 4 rows scored eval's 34 held-out HH pairs in 33 s against 64 s at 16.
    score_batch_size: int = Field(4, ge=1, description="sequences per log-prob scoring batch (KL, implicit accuracy)")
    # Engine for every model's answers and for KL / implicit-accuracy log-probs; reward scores run on HF.
    backend: Literal["auto", "hf", "openvino", "ct2"] = Field(
        "auto", description="auto = OpenVINO when installed, else CTranslate2 when installed, else hf")
    max_length: int = Field(512, ge=16, description="prompt+response tokens when scoring log-probs")
    # The independent judge (the rank stage's judges): the reward model is not trusted to grade
    # what was optimized against it.
    judge: Literal["reference", "llm"] = "reference"
    include_base: bool = True  # also generate with params.model.base (untuned) for context
    compare_champion: bool = True  # compare with the registry's `champion` of alignflow-policy
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for win-rate CIs (0 = none)")
    # Repeated generation: every model answers every prompt once per seed (null = once, with the
    # top-level seed). Costs len(seeds)× the generation time; in return the numbers average over
    # sampling noise, the CIs still resample prompts (a prompt's seeds averaged), and every
    # compared number gains *_seed_std: how much it moves when only the seed changes.
    seeds: list[int] | None = Field(None, min_length=1)
    report_examples: int = Field(8, ge=0, description="side-by-side examples in reports/eval.html")
    gate: GateParams = GateParams()

    def cross_check(self, params) -> list[str]:
        problems = []
        gate = self.gate
        if gate.winrate_bound == "ci_low" and not self.bootstrap:
            problems.append("gate.winrate_bound: ci_low needs the bootstrap CIs; set eval.bootstrap > 0 "
                            "or gate.winrate_bound: point")
        if gate.judge in ("reference", "llm") and gate.judge != self.judge:
            problems.append(f"gate.judge: {gate.judge!r} but eval.judge is {self.judge!r}, whose win rates eval "
                            "computes; set them alike (or gate.judge: null)")
        if (gate.judge == "verifier" or gate.min_ifeval_delta is not None) and not self.max_ifeval_prompts:
            problems.append("gate: the verifier judge and min_ifeval_delta need constraint prompts; "
                            "set eval.max_ifeval_prompts > 0")
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds: {self.seeds} repeats a seed (it would count the same answers twice)")
        if self.seeds and len(self.seeds) > 1 and self.temperature == 0:
            problems.append("seeds: several seeds with temperature 0 (greedy) give the same answers every time; "
                            "set eval.temperature > 0 or one seed")
        llm = params.rank.llm
        if self.judge == "llm" and llm.backend == "http" and not llm.base_url:
            problems.append("judge: 'llm' uses rank.llm, which needs rank.llm.base_url (http) or rank.llm.backend: local")
        return problems
