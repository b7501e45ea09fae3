"""Params of instruction-data synthesis (the synthesize stage) and quality selection (format).

`synthesize` grows the seed tasks (collect sources with `seeds: true`) with Self-Instruct and
Evol-Instruct through a teacher model; `selection` scores the SFT training conversations
(Alpagasus), keeps the best and balances them by complexity. Both are off by default: the
default pipeline's outputs do not change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alignflow.config.base import Section

EVOL_OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth")
# Pipeline outputs written after format: reading them in format would be a cycle in dvc.yaml.
LATER_OUTPUTS = ("models/sft", "models/reward", "models/policy")


class TeacherParams(Section):
    """A chat model behind the cached, retrying client (data/synthesis/teacher.py): an
    OpenAI-compatible endpoint (`http`, e.g. a vLLM server) or a model loaded in-process (`local`)."""

    backend: Literal["local", "http"] = "local"
    model: str = Field("embedded:smollm2-135m-instruct",
                       description="local: a model spec or path; http: the model name the endpoint serves")
    base_url: str | None = Field(None, description="http: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="http: the env var holding the API key")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1, description="local: sequences per generate(); http: concurrent requests")
    max_retries: int = Field(3, ge=0, description="re-asks after a transient failure (HTTP 429/5xx, a malformed body)")
    retry_backoff_s: float = Field(1.0, ge=0.0, description="first wait before a retry; doubles each time")
    requests_per_minute: float | None = Field(None, gt=0, description="http: client-side rate limit; null = none")
    timeout_s: float = Field(120.0, gt=0)
    # Every answer is appended here under a hash of the request: a re-run (or a run resumed after
    # a kill) asks only what is not there. Outside the stage's DVC outputs, which `dvc repro` deletes.
    cache_dir: str | None = Field(".alignflow/cache/teacher", description="null = no cache")

    def cross_check_as(self, where: str) -> list[str]:
        if self.backend == "http" and not self.base_url:
            return [f"{where}.base_url: the http backend needs an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1)"]
        return []


class RatingJudgeParams(TeacherParams):
    """selection.llm: the teacher's client as a judge, greedy, and short (the score is the first line)."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_new_tokens: int = Field(8, ge=1)


class SelfInstructParams(Section):
    """Self-Instruct (Wang et al. 2023): bootstrap new tasks from a pool that starts as the seeds."""

    enabled: bool = True
    target: int = Field(100, ge=1, description="stop once this many new instructions passed the filters")
    max_rounds: int = Field(50, ge=1, description="stop after this many rounds even below target")
    prompts_per_round: int = Field(8, ge=1, description="instruction-generation requests per round")
    in_context_tasks: int = Field(8, ge=1, description="tasks shown in each request (the paper: 8)")
    human_tasks: int = Field(6, ge=0, description="of them, seed tasks (the paper: 6; the rest are generated ones)")
    max_similarity: float = Field(0.7, gt=0.0, le=1.0, description="drop an instruction whose ROUGE-L with any pool task exceeds this")
    blocklist: list[str] = Field(default_factory=lambda: [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
        "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    ], description="instructions with any of these words cannot be done by a text model")
    blocked_prefixes: list[str] = Field(default_factory=lambda: ["write a program"])
    min_instruction_words: int = Field(4, ge=1, description="the paper drops instructions of 3 words or fewer")
    max_instruction_words: int = Field(150, ge=1)
    max_output_words: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "SelfInstructParams":
        if self.human_tasks > self.in_context_tasks:
            raise ValueError(f"human_tasks: {self.human_tasks} is more than in_context_tasks ({self.in_context_tasks})")
        if self.min_instruction_words > self.max_instruction_words:
            raise ValueError("min_instruction_words must be <= max_instruction_words")
        return self


class EvolInstructParams(Section):
    """Evol-Instruct (Xu et al. 2023): rewrite instructions harder (in depth) or into new ones of
    the same domain (in breadth), answer them, and eliminate the failed evolutions."""

    enabled: bool = True
    rounds: int = Field(2, ge=1, description="evolution rounds; round r evolves round r-1's survivors")
    inputs: Literal["seeds", "self_instruct", "both"] = Field("seeds", description="the instructions round 1 evolves")
    max_inputs: int = Field(32, ge=1, description="round 1 evolves at most this many instructions")
    operations: list[Literal[EVOL_OPERATIONS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(EVOL_OPERATIONS), min_length=1, description="drawn uniformly per instruction")
    # Elimination rule 2: a reply with "sorry" shorter than this many words: the teacher cannot answer.
    sorry_max_words: int = Field(80, ge=1)
    # Elimination rule 1, "no information gain": `rules` = the evolved instruction adds no new
    # word to its parent; `teacher` also asks the teacher the paper's equality question.
    equality_check: Literal["rules", "teacher"] = "rules"
    max_instruction_words: int = Field(300, ge=1)


class SynthesizeParams(Section):
    enabled: bool = False
    teacher: TeacherParams = TeacherParams()
    self_instruct: SelfInstructParams = SelfInstructParams()
    evol_instruct: EvolInstructParams = EvolInstructParams()
    weight: float = Field(1.0, gt=0, description="share of each synthetic task in format's training mix")
    license: str = Field("unknown", description="the teacher's terms of use decide it")

    def cross_check(self, params) -> list[str]:
        if not self.enabled:
            return []
        problems = self.teacher.cross_check_as("teacher")
        if not (self.self_instruct.enabled or self.evol_instruct.enabled):
            problems.append("enabled: true, but self_instruct.enabled and evol_instruct.enabled are both false")
        if not any(getattr(s, "seeds", False) for s in params.collect.sources):
            problems.append("enabled: true, but no collect source is marked `seeds: true` (the seed tasks)")
        if self.evol_instruct.enabled and self.evol_instruct.inputs == "self_instruct" and not self.self_instruct.enabled:
            problems.append("evol_instruct.inputs: self_instruct, but self_instruct.enabled is false")
        return problems


class BalanceParams(Section):
    """Difficulty balancing: buckets of a complexity feature, filled to target proportions
    (the largest subset with those proportions; an empty bucket's share goes to the others)."""

    enabled: bool = False
    feature: Literal["instruction_tokens", "constraints", "evolution_round"] = "instruction_tokens"
    edges: list[float] = Field(default_factory=lambda: [24, 64], description="bucket upper bounds (ascending)")
    proportions: list[float] = Field(default_factory=lambda: [0.3, 0.4, 0.3], description="one per bucket, sum 1")

    @model_validator(mode="after")
    def _buckets(self) -> "BalanceParams":
        if sorted(self.edges) != self.edges or len(set(self.edges)) != len(self.edges):
            raise ValueError(f"edges: {self.edges} must be strictly ascending")
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(f"proportions: {len(self.proportions)} values for {len(self.edges) + 1} buckets "
                             f"(len(edges) + 1)")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1.0) > 1e-6:
            raise ValueError(f"proportions: must be >= 0 and sum to 1 (got {sum(self.proportions):g})")
        return self


class SelectionParams(Section):
    """Quality selection of the SFT training conversations (format, train split only: the
    held-out splits stay the same across a keep_fraction sweep, so eval compares like with like)."""

    enabled: bool = False
    judge: Literal["llm", "reward_model"] = "llm"
    llm: RatingJudgeParams = RatingJudgeParams()
    # A reward model dir (or spec) that exists before format runs: the pipeline's own models/reward
    # is written after format (a cycle); copy one from an earlier run or the registry.
    reward_model: str | None = None
    threshold: float | None = Field(None, ge=1.0, le=5.0, description="keep a score >= this (llm: 1-5; reward_model: its rank-based 1-5)")
    keep_fraction: float = Field(1.0, gt=0.0, le=1.0, description="then keep the best-scored fraction")
    tasks: list[str] | None = Field(None, description="score only these tasks (e.g. the synthetic ones); null = all")
    balance: BalanceParams = BalanceParams()

    def cross_check(self, params) -> list[str]:
        if not self.enabled:
            return []
        problems = self.llm.cross_check_as("llm") if self.judge == "llm" else []
        if self.judge == "reward_model":
            rm = (self.reward_model or "").rstrip("/")
            if not rm:
                problems.append("reward_model: the reward_model judge needs a reward model dir or spec")
            elif rm.removeprefix("./") in LATER_OUTPUTS:
                problems.append(f"reward_model: {rm} is written after format (a cycle in dvc.yaml); copy it elsewhere "
                                "(e.g. a registry download) and point at the copy")
        return problems
