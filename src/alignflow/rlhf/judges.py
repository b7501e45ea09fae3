"""Judges: score a prompt's K responses, or compare two of them (the rank stage's "labelers").

- `reference`  — cosine similarity (MiniLM sentence embeddings, loaded offline) of each response to
                 the prompt's reference answer (or to the prompt itself when there is none, a
                 relevance proxy), minus rule penalties for refusals/apologies, repetition, empty
                 and truncated answers (Gao et al. 2023 and Singhal et al. 2023 describe these as the habits an over-optimized
                 reward model teaches; penalising them here keeps them out of the pairs).
- `reward_model` — a trained Bradley–Terry reward model's scalar score.
- `llm`        — RLAIF (Bai et al. 2022; Lee et al. 2023): a local HF model or an OpenAI-compatible endpoint judges
                 pairs; each pair is asked in both orders so position bias cancels; a reply with no
                 parseable verdict is re-asked, then counted as failed — never guessed.
- `human`      — Label Studio annotations (rankings or pairwise choices), see labelstudio.py.

`Judge.score(prompt, responses, reference=None) -> list[float]` (NaN = no verdict) and
`Judge.compare(prompt, a, b, reference=None) -> float` (P(a better than b); NaN = no verdict).
A judge's `compare_scale` is its calibration, score units per Bradley–Terry logit (reference: 0.1);
`margin_in_logits` turns a score gap into the logit margin the reward model's loss takes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

Messages = list[dict]

# ---------------------------------------------------------------------------------------------
# Rule penalties (public: the eval stage reuses the phrase lists)
# ---------------------------------------------------------------------------------------------

REFUSAL_PHRASES = (
    "i can't help", "i cannot help", "i can't assist", "i cannot assist", "i can't provide", "i cannot provide",
    "i'm unable to", "i am unable to", "i'm not able to", "i am not able to", "i won't be able to",
    "i can't do that", "i cannot do that", "i must decline", "i can't comply", "i cannot comply",
    "as an ai", "as a language model", "as an ai language model", "i'm just an ai",
    "我无法", "我不能", "作为一个ai", "作为一个人工智能", "作为ai",
)
APOLOGY_PHRASES = (
    "i apologize", "i'm sorry", "i am sorry", "my apologies", "sorry, but", "sorry for the",
    "抱歉", "对不起",
)
# A response that stops here looks finished (sentence punctuation, closing brackets/quotes, code fences).
_FINISHED_ENDINGS = tuple(".!?。！？…)]}\"'`*>»”’") + ("```",)
_WORD = re.compile(r"\w+", re.UNICODE)


def _has_phrase(text: str, phrases: tuple[str, ...]) -> bool:
    low = text.lower().replace("’", "'")
    return any(p in low for p in phrases)


def repetition_ratio(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier one (0 = none; loops approach 1)."""
    words = _WORD.findall(text.lower())
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _repeated_line(text: str, times: int = 3) -> bool:
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 8]
    return bool(lines) and Counter(lines).most_common(1)[0][1] >= times


def rule_penalties(text: str, finished: bool | None = None, repetition_threshold: float = 0.3) -> dict[str, bool]:
    """Flags for the failure modes judges penalise: refusal, apology, repetition, empty, truncated.

    `finished` is the generator's own "stopped at EOS" bit when known; without it a response
    counts as truncated when it does not end like a sentence (heuristic, for text from elsewhere).
    """
    stripped = text.strip()
    empty = len(_WORD.findall(stripped)) == 0
    if finished is None:
        truncated = not empty and len(stripped) > 40 and not stripped.endswith(_FINISHED_ENDINGS)
    else:
        truncated = not finished and not empty
    return {
        "refusal": _has_phrase(stripped, REFUSAL_PHRASES),
        "apology": _has_phrase(stripped, APOLOGY_PHRASES),
        "repetition": repetition_ratio(stripped) > repetition_threshold or _repeated_line(stripped),
        "empty": empty,
        "truncated": truncated,
    }


# ---------------------------------------------------------------------------------------------
# The protocol and helpers
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None) -> list[float]: ...

    def compare(self, prompt: Messages, a: str, b: str, reference: str | None = None) -> float: ...


def prompt_text(prompt: Messages) -> str:
    """The last user turn (what the responses answer)."""
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1]["content"] if prompt else "")


def render_conversation(prompt: Messages, sep: str = "\n") -> str:
    """The conversation as plain text, one "Role: content" turn per `sep`."""
    return sep.join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def margin_in_logits(judge, gap: float) -> float:
    """A score gap of `judge` in logits of the reward model (−log σ(r_c − r_r − margin)): gap / compare_scale."""
    return gap / getattr(judge, "compare_scale", 1.0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


class ScoringJudge:
    """A judge that scores responses independently; compare() is Bradley–Terry on the score gap."""

    name = "scoring"
    compare_scale = 1.0  # score units per logit
    stats: dict[str, int]

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None) -> list[float]:
        raise NotImplementedError

    def compare(self, prompt: Messages, a: str, b: str, reference: str | None = None) -> float:
        sa, sb = self.score(prompt, [a, b], reference)
        if math.isnan(sa) or math.isnan(sb):
            return float("nan")
        return _sigmoid((sa - sb) / self.compare_scale)


# ---------------------------------------------------------------------------------------------
# reference: embedding similarity + rules
# ---------------------------------------------------------------------------------------------


class ReferenceJudge(ScoringJudge):
    name = "reference"
    compare_scale = 0.1  # a 0.1 similarity gap ≈ one logit

    def __init__(self, embedding_model: str | None = None, refusal_penalty: float = 0.3, apology_penalty: float = 0.1,
                 repetition_penalty: float = 0.4, empty_penalty: float = 1.0, truncated_penalty: float = 0.15):
        from sentence_transformers import SentenceTransformer

        from alignflow.models.specs import embedded_minilm_dir

        path = embedding_model or str(embedded_minilm_dir())
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.weights = {"refusal": refusal_penalty, "apology": apology_penalty, "repetition": repetition_penalty,
                        "empty": empty_penalty, "truncated": truncated_penalty}
        self.stats = Counter()

    def penalty(self, text: str, finished: bool | None = None) -> float:
        flags = rule_penalties(text, finished)
        for key, hit in flags.items():
            self.stats[f"rule_{key}"] += int(hit)
        return sum(self.weights[k] for k, hit in flags.items() if hit)

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None,
              finished: list[bool] | None = None) -> list[float]:
        target = reference if reference else prompt_text(prompt)  # relevance to the prompt when no reference
        emb = self.model.encode([target, *responses], convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        sims = (emb[1:] @ emb[0]).tolist()
        finished = finished or [None] * len(responses)
        return [s - self.penalty(r, f) for s, r, f in zip(sims, responses, finished)]


# ---------------------------------------------------------------------------------------------
# reward_model: a trained reward model's score
# ---------------------------------------------------------------------------------------------


class RewardModelJudge(ScoringJudge):
    name = "reward_model"
    compare_scale = 1.0  # Bradley–Terry: P(a > b) = σ(r_a − r_b), exactly what the model was trained on

    def __init__(self, path: str, batch_size: int = 8, model=None, tokenizer=None):
        if model is None:
            from alignflow.models import load_reward_model

            model, tokenizer = load_reward_model(path)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = batch_size
        self.stats = Counter()

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None, **_: Any) -> list[float]:
        return score_with_reward_model(self.model, self.tokenizer, [prompt] * len(responses), responses, self.batch_size)


def pair_side(pairs: list[dict], side: str) -> tuple[list[Messages], list[str]]:
    """How a reward model reads one side ("chosen" or "rejected") of preference pairs: the
    conversation up to that side's last answer (a multi-turn side's earlier turns join the prompt),
    and that answer."""
    return [[*p["prompt"], *p[side][:-1]] for p in pairs], [p[side][-1]["content"] for p in pairs]


def score_with_reward_model(model, tokenizer, prompts: list[Messages], responses: list[str], batch_size: int = 8,
                            max_length: int = 1024) -> list[float]:
    """Reward-model scores of (prompt, response) conversations, rendered with the chat template
    (an embedding-backbone reward model embeds them itself)."""
    import torch

    if hasattr(model, "features"):  # models.embedding_reward.EmbeddingRewardModel
        return model.score(prompts, responses)
    texts = [
        tokenizer.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(prompts, responses)
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # sequence-classification models pool the last non-pad token
    scores: list[float] = []
    try:
        device = next(model.parameters()).device
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length, add_special_tokens=False).to(device)
            with torch.no_grad():
                scores += model(**enc).logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
    return scores


# ---------------------------------------------------------------------------------------------
# llm: RLAIF with position-debiased pairwise verdicts
# ---------------------------------------------------------------------------------------------

PAIRWISE_SYSTEM = (
    "You are an impartial judge. Compare two assistant responses to the user's request and decide which "
    "is more helpful, correct and harmless. Ignore the order in which they are shown and their length. "
    "Reply with only your verdict: [[A]] if Response A is better, [[B]] if Response B is better, "
    "or [[TIE]] if they are equally good."
)
PAIRWISE_TEMPLATE = (
    "[Conversation]\n{conversation}\n{reference_block}\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better? Answer [[A]], [[B]] or [[TIE]]."
)
_VERDICT = re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\W*(A|B|TIE)\W*$", re.IGNORECASE)


def parse_verdict(reply: str | None) -> str | None:
    """'A', 'B' or 'TIE' from a judge reply; None when there is no single clear verdict."""
    if not reply:
        return None
    found = {m.upper() for m in _VERDICT.findall(reply)}
    if len(found) == 1:
        return found.pop()
    if not found:
        bare = _BARE_VERDICT.match(reply.strip())
        if bare:
            return bare.group(1).upper()
    return None  # none, or contradictory verdicts


class JudgeUnavailable(RuntimeError):
    """The judge endpoint cannot be reached or refuses the request (not a bad verdict)."""


class HTTPChatBackend:
    """POST {base_url}/chat/completions (OpenAI-compatible); the key comes from the named env var.

    Greedy with a short reply by default (a judge's verdict); the synthesize stage's teacher
    samples longer ones (`temperature`, `top_p`, and per-call `max_tokens` / `temperature`)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_tokens: int = 8, temperature: float = 0.0, top_p: float | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature, self.top_p = temperature, top_p

    def chat(self, messages: Messages, max_tokens: int | None = None, temperature: float | None = None) -> str | None:
        payload = {"model": self.model, "messages": messages,
                   "temperature": self.temperature if temperature is None else temperature,
                   "max_tokens": max_tokens or self.max_tokens}
        if self.top_p is not None:
            payload["top_p"] = self.top_p
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            if err.code in (429, 500, 502, 503, 504):
                return None  # transient: the caller retries and counts it
            raise JudgeUnavailable(f"LLM judge {self.url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise JudgeUnavailable(f"LLM judge {self.url}: {err}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None  # a malformed body is an unparseable reply, like a malformed verdict


class LocalChatBackend:
    """A local HF chat model (alignflow.models spec or path), greedy by default; `chat_many`
    answers a list of conversations in batched generate() calls (the synthesize stage's teacher)."""

    def __init__(self, spec: str, max_new_tokens: int = 8, model=None, tokenizer=None, temperature: float = 0.0,
                 top_p: float = 1.0, batch_size: int = 8):
        if model is None:
            from alignflow.models import load_causal_lm

            model, tokenizer = load_causal_lm(spec)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size

    def chat(self, messages: Messages) -> str | None:
        return self.chat_many([messages])[0]

    def chat_many(self, conversations: list[Messages], max_tokens: int | None = None, temperature: float | None = None,
                  seed: int = 0) -> list[str]:
        from alignflow.rlhf.generation import generate

        replies = generate(self.model, self.tokenizer, conversations, n=1, max_new_tokens=max_tokens or self.max_new_tokens,
                           temperature=self.temperature if temperature is None else temperature, top_p=self.top_p,
                           seed=seed, batch_size=self.batch_size, progress=False)
        return [r[0] for r in replies]


class LLMJudge:
    """Pairwise LLM judge; every pair is asked as (a, b) and (b, a) and the verdicts averaged."""

    name = "llm"
    compare_scale = 0.25  # scores are mean win probabilities: σ'(0) = 1/4, so a 0.25 gap ≈ one logit near even odds

    def __init__(self, backend, max_retries: int = 2):
        self.backend = backend
        self.max_retries = max_retries
        self.stats = Counter()

    def _verdict(self, prompt: Messages, first: str, second: str, reference: str | None) -> str | None:
        ref = f"\n[Reference answer]\n{reference}\n" if reference else ""
        messages = [
            {"role": "system", "content": PAIRWISE_SYSTEM},
            {"role": "user", "content": PAIRWISE_TEMPLATE.format(
                conversation=render_conversation(prompt), reference_block=ref, a=first, b=second)},
        ]
        for attempt in range(self.max_retries + 1):
            self.stats["calls"] += 1
            verdict = parse_verdict(self.backend.chat(messages))
            if verdict is not None:
                return verdict
            self.stats["unparseable_replies"] += 1
            if attempt < self.max_retries:
                self.stats["retries"] += 1
        self.stats["failed_verdicts"] += 1
        return None

    def compare(self, prompt: Messages, a: str, b: str, reference: str | None = None) -> float:
        """P(a better than b) from both orders; NaN when either order gave no verdict."""
        first = self._verdict(prompt, a, b, reference)   # a shown as A
        second = self._verdict(prompt, b, a, reference)  # a shown as B
        self.stats["pairs"] += 1
        if first is None or second is None:
            self.stats["pairs_without_verdict"] += 1
            return float("nan")
        p_first = {"A": 1.0, "B": 0.0, "TIE": 0.5}[first]
        p_second = {"B": 1.0, "A": 0.0, "TIE": 0.5}[second]
        if p_first != p_second:
            self.stats["position_inconsistent"] += 1  # the judge preferred a position, not a response
        return (p_first + p_second) / 2

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None, **_: Any) -> list[float]:
        """Round robin: a response's score is its mean win probability against the others."""
        k = len(responses)
        wins = [[] for _ in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                p = self.compare(prompt, responses[i], responses[j], reference)
                if not math.isnan(p):
                    wins[i].append(p)
                    wins[j].append(1.0 - p)
        return [sum(w) / len(w) if w else float("nan") for w in wins]


# ---------------------------------------------------------------------------------------------
# human: Label Studio annotations
# ---------------------------------------------------------------------------------------------


class HumanJudge(ScoringJudge):
    """Scores from merged Label Studio annotations; responses nobody annotated get NaN."""

    name = "human"
    compare_scale = 0.25

    def __init__(self, scores_by_prompt: dict[str, dict[str, float]]):
        self.scores_by_prompt = scores_by_prompt
        self.stats = Counter()

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None, **_: Any) -> list[float]:
        from alignflow.io import content_id

        known = self.scores_by_prompt.get(content_id(prompt), {})
        out = [known.get(r, float("nan")) for r in responses]
        self.stats["unannotated"] += sum(math.isnan(s) for s in out)
        return out


# ---------------------------------------------------------------------------------------------
# verifier: IFEval's checkers on prompts with verifiable constraints (RLVR's reward, as a judge)
# ---------------------------------------------------------------------------------------------


class VerifierJudge(ScoringJudge):
    """The share of the prompt's constraints a response follows (strict, alignflow.verifiable);
    a prompt without constraints is scored by `fallback` (None: NaN, so it makes no pairs).

    Pairs then hold a sample that follows more constraints against one that follows fewer (Tülu 3's
    verifiable rewards, turned into preferences); the margin is the share gap / compare_scale."""

    name = "verifier"

    def __init__(self, fallback: ScoringJudge | None = None, compare_scale: float = 0.5):
        self.fallback, self.compare_scale = fallback, compare_scale
        self.stats = Counter()

    def score(self, prompt: Messages, responses: list[str], reference: str | None = None,
              finished: list[bool] | None = None, constraints: list[dict] | None = None) -> list[float]:
        from alignflow.verifiable import verify

        if not constraints:
            self.stats["fallback_prompts"] += 1
            if self.fallback is None:
                return [float("nan")] * len(responses)
            kwargs = {"finished": finished} if self.fallback.name == "reference" else {}
            return self.fallback.score(prompt, responses, reference, **kwargs)
        self.stats["constraint_prompts"] += 1
        verdicts = [verify(r, constraints, prompt_text(prompt)) for r in responses]
        self.stats["followed_all"] += sum(v.all_strict for v in verdicts)
        self.stats["responses_checked"] += len(verdicts)
        return [v.fraction_strict for v in verdicts]


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


SAMPLES_PATH = Path("data/samples/samples.jsonl")


def build_judge(name: str, params, samples: list[dict] | None = None, rejects=None) -> Judge:
    """A judge from `rank.*` params (`params` is the full Params or the RankParams section).

    `samples` (the human judge only): the sample records the Label Studio tasks were made from;
    read from data/samples/samples.jsonl when not given. `rejects` (an io.RejectWriter) receives
    the malformed Label Studio tasks and annotations, each with its reason.
    """
    rank = getattr(params, "rank", params)
    if name == "reference":
        return ReferenceJudge(**rank.reference.model_dump())
    if name == "reward_model":
        return RewardModelJudge(rank.reward_model)
    if name == "llm":
        cfg = rank.llm
        if cfg.backend == "http":
            if not cfg.base_url:
                raise ValueError("rank.llm.base_url: required for the http LLM judge")
            backend = HTTPChatBackend(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.max_new_tokens)
        else:
            backend = LocalChatBackend(cfg.model, cfg.max_new_tokens)
        return LLMJudge(backend, cfg.max_retries)
    if name == "verifier":
        fallback = None if rank.verifier.fallback == "none" else build_judge(rank.verifier.fallback, params)
        return VerifierJudge(fallback, rank.verifier.compare_scale)
    if name == "human":
        from alignflow.rlhf import labelstudio

        if not rank.human_annotations:
            raise ValueError("rank.human_annotations: the human judge needs a Label Studio export")
        if samples is None:
            from alignflow.io import read_jsonl

            samples = list(read_jsonl(SAMPLES_PATH))
        # The tasks are rebuilt from the samples (deterministic ids), so an annotation of a task
        # from other samples is caught even though the previous tasks file was replaced.
        tasks = labelstudio.export_tasks(samples, "ranking") + labelstudio.export_tasks(samples, "pairwise")
        judgements = labelstudio.import_annotations(rank.human_annotations, tasks, rejects)
        return HumanJudge(labelstudio.merge_scores(judgements, tasks))
    raise ValueError(f"unknown judge {name!r}; expected reference, reward_model, llm, human or verifier")
