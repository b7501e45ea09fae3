"""Evol-Instruct (Xu et al. 2023, WizardLM): evolve instructions into harder or new ones.

Each round draws one operation per instruction: in depth (add a constraint, deepen, concretize,
increase the reasoning steps, complicate the input) or in breadth (a new instruction of the same
domain). The teacher rewrites the instruction, then answers the rewrite. An evolution is
eliminated when (1) it brings no information gain over its parent, (2) the teacher cannot answer
it ("sorry" in a short answer), (3) the answer is only punctuation and stop words, or (4) it copies
the rewriting prompt's own words ("#Given Prompt#", "#Rewritten Prompt#"). A survivor is a record
with its lineage (parent, operation, round, root) and is what the next round evolves; an
eliminated evolution's parent goes back into the next round's pool, as in the paper.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

from alignflow.config.synthesis import EvolInstructParams
from alignflow.data.sources import conversation_record, msg
from alignflow.data.synthesis import filters as F
from alignflow.data.synthesis.teacher import Request, Teacher
from alignflow.io import RejectWriter

log = logging.getLogger(__name__)
METHOD = "evol_instruct"
SOURCE = f"synthetic:{METHOD}"

DEPTH_PROMPT = """I want you to act as a Prompt Rewriter.
Your objective is to rewrite a given prompt into a more complex version to make famous AI systems (e.g., ChatGPT and GPT-4) a bit harder to handle.
But the rewritten prompt must be reasonable and must be understood and responded to by humans.
Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#. Also, please do not omit the input in #The Given Prompt#.
You SHOULD complicate the given prompt using the following method:
{method}
You should try your best not to make the #Rewritten Prompt# verbose; #Rewritten Prompt# can only add 10 to 20 words into #The Given Prompt#.
'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to appear in #Rewritten Prompt#.
#The Given Prompt#:
{instruction}
#Rewritten Prompt#:
"""
BREADTH_PROMPT = """I want you to act as a Prompt Creator.
Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.
This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.
The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.
The #Created Prompt# must be reasonable and must be understood and responded to by humans.
'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in #Created Prompt#.
#Given Prompt#:
{instruction}
#Created Prompt#:
"""
DEPTH_METHODS = {
    "add_constraints": "Please add one more constraint or requirement into #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
              "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can "
                          "rewrite it to explicitly request multiple-step reasoning.",
    "complicate_input": "Please add a piece of input data that the task must use: a small table, a short code "
                        "snippet, a formula or a list of values.",
}
EQUALITY_PROMPT = """Here are two instructions to an AI assistant. Do you think they are equal to each other, meeting these requirements:
1. They have the same constraints and requirements.
2. They have the same depth and breadth of the inquiry.
The First Prompt: {first}
The Second Prompt: {second}
Your Judgement (just answer: Equal or Not Equal; no need to explain the reason):"""


@dataclass
class Item:
    id: str
    instruction: str  # the whole user turn (an input included): what is evolved
    root: str
    round: int = 0


def item_of(record: dict) -> Item:
    user = [m for m in record["messages"] if m["role"] == "user"][-1]["content"]
    return Item(record["id"], user, record.get("synthetic", {}).get("root", record["id"]),
                record.get("synthetic", {}).get("round", 0) if record.get("source") == SOURCE else 0)


def evolution_prompt(operation: str, instruction: str) -> list[dict]:
    if operation == "breadth":
        return [msg("user", BREADTH_PROMPT.format(instruction=instruction))]
    return [msg("user", DEPTH_PROMPT.format(method=DEPTH_METHODS[operation], instruction=instruction))]


def clean_rewrite(reply: str | None) -> str:
    """The rewritten instruction: surrounding quotes and whitespace dropped (the markers are kept,
    so that rule 4 can see them)."""
    return (reply or "").strip().strip('"').strip()


class EvolInstruct:
    def __init__(self, inputs: list[dict], p: EvolInstructParams, teacher: Teacher, rng: random.Random,
                 rejects: RejectWriter, license: str):
        self.p, self.teacher, self.rng, self.rejects, self.license = p, teacher, rng, rejects, license
        self.pool = [item_of(r) for r in inputs]
        self.records: list[dict] = []
        self.dropped: Counter = Counter()
        self.by_operation: Counter = Counter()
        self.candidates = 0

    def drop(self, candidate: dict, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self.rejects.add(candidate, f"{METHOD}.{reason}", detail)

    def instruction_verdict(self, parent: Item, text: str) -> F.Verdict:
        return (F.language_check(text) or F.copies_prompt_words(text)
                or F.length_check(text, 1, self.p.max_instruction_words)
                or F.no_information_gain(parent.instruction, text))

    def round(self, r: int) -> list[Item]:
        """Evolve the pool once; returns the next round's pool."""
        ops = [self.rng.choice(self.p.operations) for _ in self.pool]
        rewrites = self.teacher.ask([Request(evolution_prompt(op, it.instruction), salt=f"{METHOD}:{r}:{op}")
                                     for op, it in zip(ops, self.pool)])
        alive: list[tuple[Item, str, str]] = []
        next_pool: list[Item] = []
        for parent, op, reply in zip(self.pool, ops, rewrites):
            self.candidates += 1
            text = clean_rewrite(reply)
            candidate = {"parent": parent.id, "operation": op, "round": r, "instruction": text}
            verdict = F.TEACHER_FAILED if reply is None else self.instruction_verdict(parent, text)
            if verdict:
                self.drop(candidate, *verdict)
                next_pool.append(parent)  # a failed evolution: the parent is evolved again next round
            else:
                alive.append((parent, op, text))
        if self.p.equality_check == "teacher" and alive:
            alive = self.teacher_equality(alive, r, next_pool)
        answers = self.teacher.ask([Request([msg("user", text)]) for _, _, text in alive])
        for (parent, op, text), answer in zip(alive, answers):
            candidate = {"parent": parent.id, "operation": op, "round": r, "instruction": text, "output": answer}
            verdict = (F.TEACHER_FAILED if answer is None else
                       F.stopwords_only(answer) or F.cannot_answer(answer, self.p.sorry_max_words))
            if verdict:
                self.drop(candidate, *verdict)
                next_pool.append(parent)
                continue
            record = conversation_record(
                [msg("user", text), msg("assistant", answer.strip())], task=SOURCE, source=SOURCE, license=self.license,
                origin=f"synthesize:{METHOD}:round{r}",
                synthetic={"method": METHOD, "teacher": self.teacher.label, "round": r, "operation": op,
                           "parent": parent.id, "parents": [parent.id], "root": parent.root},
            )
            self.records.append(record)
            self.by_operation[op] += 1
            next_pool.append(Item(record["id"], text, parent.root, r))
        return next_pool

    def teacher_equality(self, alive, r: int, next_pool: list[Item]):
        """Rule 1 as the paper asks it: the teacher judges whether the rewrite equals its parent."""
        verdicts = self.teacher.ask([Request([msg("user", EQUALITY_PROMPT.format(first=p.instruction, second=t))])
                                     for p, _, t in alive], max_new_tokens=4, temperature=0.0)
        kept = []
        for (parent, op, text), verdict in zip(alive, verdicts):
            if verdict is not None and verdict.strip().lower().startswith("equal"):
                self.drop({"parent": parent.id, "operation": op, "round": r, "instruction": text},
                          "no_information_gain", "the teacher judged it equal to its parent")
                next_pool.append(parent)
            else:
                kept.append((parent, op, text))
        return kept

    def run(self) -> list[dict]:
        for r in range(1, self.p.rounds + 1):
            before = len(self.records)
            self.pool = self.round(r)
            log.info("evol_instruct round %d: %d evolved, %d dropped so far", r, len(self.records) - before,
                     sum(self.dropped.values()))
        return self.records

    def metrics(self) -> dict:
        return {"rounds": self.p.rounds, "candidates": self.candidates, "kept": len(self.records),
                "by_operation": dict(sorted(self.by_operation.items())), "dropped": dict(sorted(self.dropped.items()))}

