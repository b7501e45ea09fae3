"""Params of the data stages: collect, clean, format (params.yaml sections of the same names)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignflow.config.base import Section
from alignflow.verifiable import SUPPORTED as SUPPORTED_CONSTRAINTS

SourceFormat = Literal["alpaca", "self_instruct_seed", "sharegpt", "messages", "hh_rlhf", "preference", "prompts"]
RecordKind = Literal["conversations", "preferences", "prompts"]
KINDS: tuple[str, ...] = ("conversations", "preferences", "prompts")


class SourceParams(Section):
    """One input: a local file/glob/directory (`path`) or a Hugging Face dataset (`hf`)."""

    name: str | None = Field(None, description="provenance name; default: the file stem or hf id")
    path: str | None = None
    hf: str | None = Field(None, description="hub dataset id, loaded with `datasets` (needs network)")
    hf_config: str | None = None
    split: str = "train"
    format: SourceFormat
    limit: int | None = Field(None, ge=1, description="keep the first N records of this source")
    task: str | None = Field(None, description="task label used for splits and mixing; default: the name")
    weight: float = Field(1.0, gt=0, description="relative share of this task in the training mix")
    license: str = "unknown"
    # Seed tasks for the synthesize stage (Self-Instruct's task pool, Evol-Instruct's first round).
    seeds: bool = False

    @model_validator(mode="after")
    def _one_location(self) -> "SourceParams":
        if (self.path is None) == (self.hf is None):
            raise ValueError("give exactly one of `path` (file, glob or directory) or `hf` (hub dataset id)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.hf:
            return self.hf
        parts = [p for p in self.path.rstrip("/").split("/") if p]
        stem = parts[-1] if parts else "source"
        for suffix in (".gz", ".jsonl", ".json"):
            stem = stem.removesuffix(suffix)
        # a glob names its files by pattern: keep the literal part ("shards/part-*.jsonl" -> "part")
        stem = stem.split("*")[0].split("?")[0].split("[")[0].rstrip("-_.")
        return stem or (parts[-2] if len(parts) > 1 else "source")

    @property
    def task_name(self) -> str:
        return self.task or self.label


class CollectParams(Section):
    sources: list[SourceParams] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceParams]) -> list[SourceParams]:
        labels = [s.label for s in sources]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"source names must be unique (set `name`): {', '.join(dupes)}")
        return sources


# ----------------------------------------------------------------------------------------- clean


class NormalizeParams(Section):
    unicode: bool = Field(True, description="repair mojibake and normalize (ftfy); emoji are kept")
    html: bool = Field(True, description="strip HTML tags/entities (selectolax)")
    # Instruction data legitimately contains markup when the user asks for it ("write an HTML page").
    html_skip_if_prompt_mentions: list[str] = Field(
        default_factory=lambda: ["html", "xml", "css", "markup", "tag", "web page", "webpage", "网页", "标签"]
    )
    whitespace: bool = True


class RepetitionParams(Section):
    """Gopher-style repetition: share of characters covered by repeated word n-grams.

    Gopher's limits (top 2/3/4-gram 0.20/0.18/0.16, duplicate 5..10-grams 0.15..0.10) are for
    web pages; instruction answers are short, list-heavy and sometimes lyrics, where those limits
    drop ~2% of good Alpaca answers. The defaults only catch degenerate repetition (a looping
    model, "D D D D ..."); set Gopher's values for web-like data.
    """

    enabled: bool = True
    min_words: int = Field(20, ge=1, description="shorter texts are not checked (too few n-grams)")
    top_ngram_max_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.60, 3: 0.55, 4: 0.50})
    dup_ngram_max_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.50, 6: 0.48, 7: 0.46, 8: 0.44, 9: 0.42, 10: 0.40}
    )


class QualityParams(Section):
    enabled: bool = True
    # Lengths of the whole record text (all turns); words count each CJK character as one word.
    min_chars: int = Field(10, ge=0)
    max_chars: int = Field(20000, ge=1)
    min_words: int = Field(2, ge=0)
    max_words: int = Field(4000, ge=1)
    punctuation_only: bool = True
    repetition: RepetitionParams = RepetitionParams()
    # Evol-Instruct post-processing: responses that refuse or apologize.
    refusal: bool = True
    refusal_phrases: list[str] = Field(
        default_factory=lambda: [
            "as an ai", "as a language model", "as an artificial intelligence", "i'm sorry, but",
            "i am sorry, but", "i apologize, but", "i cannot fulfill", "i can't assist with",
            "i'm not able to", "我无法", "作为一个ai", "作为一个人工智能", "作为ai语言模型", "对不起，",
            "很抱歉，",
        ]
    )
    # Refusals are the point of harmlessness preference data (the chosen answer often refuses).
    refusal_kinds: list[RecordKind] = Field(default_factory=lambda: ["conversations"])
    # Self-Instruct rules.
    output_equals_input: bool = True
    colon_without_input: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> "QualityParams":
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must be <= max_chars")
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")
        return self


class SafetyParams(Section):
    enabled: bool = True
    # Whole words (case-insensitive) for space-delimited languages, substrings for CJK.
    blocklist_words: list[str] = Field(
        default_factory=lambda: [
            "child pornography", "child porn", "kill yourself", "how to make a bomb", "make a pipe bomb",
            "儿童色情", "制造炸弹", "自杀方法", "恐怖袭击教程",
        ]
    )
    blocklist_regex: list[str] = Field(default_factory=lambda: [r"\bkys\b", r"(?i)\bbuild\s+an?\s+explosive\s+device\b"])
    # Which part of a record is checked: the harmful prompts and rejected answers of preference
    # data are harmful by design, so only what the model is taught to say is checked there.
    check: Literal["assistant", "all"] = "assistant"
    pii_masking: bool = True
    pii_kinds: list[Literal["email", "phone", "ip"]] = Field(default_factory=lambda: ["email", "phone", "ip"])

    @field_validator("blocklist_regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import re

        for p in patterns:
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(f"{p!r} is not a valid regex: {err}") from None
        return patterns


class ExactDedupParams(Section):
    enabled: bool = True


class NearDedupParams(Section):
    enabled: bool = True
    threshold: float = Field(0.7, gt=0, lt=1, description="estimated Jaccard at or above which two texts are duplicates")
    num_perm: int = Field(128, ge=16, le=1024)
    word_ngram: int = Field(5, ge=1, description="shingle size in words (space-delimited text)")
    char_ngram: int = Field(5, ge=1, description="shingle size in characters (CJK text)")
    min_tokens: int = Field(15, ge=1, description="texts with fewer words (CJK: characters) are only exact-deduped")
    seed: int = 1


class DiversityParams(Section):
    """Self-Instruct: drop an instruction too similar (ROUGE-L) to one already kept."""

    enabled: bool = True
    max_similarity: float = Field(0.7, gt=0, le=1)
    kinds: list[RecordKind] = Field(default_factory=lambda: ["conversations"])
    # MinHash LSH over token sets finds the candidate pairs (each pair that can exceed
    # max_similarity with this probability); only those get the exact LCS.
    candidate_recall: float = Field(0.99, gt=0, lt=1)
    num_perm: int = Field(96, ge=16, le=512)
    max_tokens: int = Field(256, ge=8, description="instructions are compared on their first N tokens")


class EvalSetParams(Section):
    """An eval set to decontaminate against (shaped like a collect source)."""

    path: str
    format: SourceFormat = "prompts"
    name: str | None = None


class DecontamParams(Section):
    enabled: bool = True
    eval_sets: list[EvalSetParams] = Field(
        default_factory=lambda: [EvalSetParams(path="data/sample/eval_prompts.jsonl", format="prompts")]
    )
    ngram: int = Field(13, ge=3, description="shared word n-gram size")
    substring_chars: int = Field(50, ge=10, description="shared character substring length (CJK-safe)")
    include_references: bool = Field(True, description="also match the eval references, not only prompts")


class CleanParams(Section):
    normalize: NormalizeParams = NormalizeParams()
    quality: QualityParams = QualityParams()
    safety: SafetyParams = SafetyParams()
    exact_dedup: ExactDedupParams = ExactDedupParams()
    near_dedup: NearDedupParams = NearDedupParams()
    diversity: DiversityParams = DiversityParams()
    decontamination: DecontamParams = DecontamParams()


# ---------------------------------------------------------------------------------------- format

OUTPUT_FILES: tuple[str, ...] = tuple(
    f"{kind}_{split}" for kind in ("sft", "prefs", "prompts", "prompts_ifeval") for split in ("train", "val", "test")
) + ("prompts_harmful_test",)


class ConstraintParams(Section):
    """Verifiable-instruction prompts (IFEval's checkers, alignflow.verifiable): each instruction of
    these tasks, in its own split, also becomes a prompt with constraints a program checks."""

    types: list[str] = Field(default_factory=lambda: list(SUPPORTED_CONSTRAINTS),
                             description="IFEval constraint ids to draw from (alignflow.verifiable.SUPPORTED)")
    max_per_prompt: int = Field(2, ge=1, le=4, description="each prompt gets 1..max_per_prompt constraints")
    tasks: list[str] | None = Field(None, description="instruction tasks to constrain; null = every SFT task, [] = none")
    # Train/val constraint prompts carry `reference`: the instruction's reference answer rewritten
    # to follow the constraints, when IFEval's checkers pass the rewrite (alignflow.data.demonstrations);
    # rank's verifier judge can prefer it over the policy's samples (rank.verifier.demonstrations).
    demonstrations: bool = True

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        unknown = [t for t in types if t not in SUPPORTED_CONSTRAINTS]
        if unknown:
            raise ValueError(f"unknown constraint type(s) {', '.join(unknown)}; "
                             f"supported: {', '.join(SUPPORTED_CONSTRAINTS)}")
        if not types:
            raise ValueError("at least one constraint type")
        return types


class SplitParams(Section):
    train: float = Field(0.9, ge=0, le=1)
    val: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitParams":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1 (got {total:g})")
        return self


class FormatParams(Section):
    splits: SplitParams = SplitParams()
    # Max tokens of a chat-formatted SFT example or preference pair (prompt + answer).
    max_length: int = Field(512, ge=16)
    # Prompts for sampling leave room for generation: longer ones are dropped.
    max_prompt_length: int = Field(256, ge=8)
    over_long: Literal["truncate", "drop"] = "truncate"
    system_prompt: str | None = None
    # Mix the train splits by source weight; a task short of its share gives the rest to others
    # (or is repeated when upsample is on).
    upsample: bool = False
    # Preference records of these tasks whose pair lands in the test split become
    # prompts_harmful_test (harmlessness eval).
    harmful_tasks: list[str] = Field(default_factory=lambda: ["hh_harmless"])
    # Record caps per output file (null = no cap); sized so `make run` trains in minutes on CPU.
    max_records: dict[str, int | None] = Field(default_factory=dict)
    constraints: ConstraintParams = ConstraintParams()

    @field_validator("max_records")
    @classmethod
    def _known_outputs(cls, caps: dict[str, int | None]) -> dict[str, int | None]:
        unknown = sorted(set(caps) - set(OUTPUT_FILES))
        if unknown:
            raise ValueError(f"unknown output(s) {', '.join(unknown)}; allowed: {', '.join(OUTPUT_FILES)}")
        bad = [k for k, v in caps.items() if v is not None and v < 0]
        if bad:
            raise ValueError(f"caps must be >= 0: {', '.join(bad)}")
        return caps

    def cross_check(self, params) -> list[str]:
        if self.max_prompt_length >= self.max_length:
            return [f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})"]
        return []
