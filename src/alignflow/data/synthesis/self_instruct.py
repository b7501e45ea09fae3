"""Self-Instruct (Wang et al. 2023): grow a task pool from seed tasks with a teacher model.

Each round: `prompts_per_round` requests, each showing `in_context_tasks` pool instructions
(`human_tasks` seeds, the rest generated ones once there are some; the paper: 6 + 2), ask the
teacher for more; the new instructions are filtered (ROUGE-L against the whole pool, blocklist,
length, a bad start, not English), classified (classification or not), given an instance
(input-first for generation tasks, output-first for classification tasks, so the inputs do not
all lean to one label), and the instances filtered. What passes joins the pool. Rounds go on
until `target` new tasks or `max_rounds`.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from alignflow.config.synthesis import SelfInstructParams
from alignflow.data.filters import input_block
from alignflow.data.sources import conversation_record, instruction_prompt, msg
from alignflow.data.synthesis import filters as F
from alignflow.data.synthesis.teacher import Request, Teacher
from alignflow.data.text import tokens
from alignflow.io import RejectWriter

log = logging.getLogger(__name__)
METHOD = "self_instruct"
SOURCE = f"synthetic:{METHOD}"

GENERATE_PROMPT = ("Come up with a series of new, diverse tasks. Continue the list below with Task {next} to "
                   "Task {last}, one task per line, in the same format.\n\n{tasks}")
CLASSIFY_PROMPT = """Can the following task be regarded as a classification task with finite output labels? Answer Yes or No.

Task: Given my personality and the job, tell me if I would be suitable.
Is it classification? Yes

Task: Give me an example of a time when you had to use your sense of humor.
Is it classification? No

Task: Tell me if the following email is a promotion email or not.
Is it classification? Yes

Task: Write a short poem about the sea.
Is it classification? No

Task: Is the sentiment of this review positive, negative or neutral?
Is it classification? Yes

Task: Suggest a name for a new coffee shop.
Is it classification? No

Task: {instruction}
Is it classification?"""
INPUT_FIRST_PROMPT = """Come up with an example for the following task. If the task needs an input, write it after "Input:" and then the correct answer after "Output:". If it needs no input, write only "Output:" and the answer.

Task: Extract all the country names in the paragraph, and list them separated by commas.
Input: Dr. No is the sixth novel by the English author Ian Fleming. Set in Jamaica, it was first published in the United Kingdom in 1958.
Output: Jamaica, United Kingdom

Task: Suggest a healthy breakfast that needs no cooking.
Output: Greek yogurt with berries, a handful of walnuts and a drizzle of honey.

Task: {instruction}
"""
OUTPUT_FIRST_PROMPT = """Given the classification task and its class labels, choose a class label and then write an input that belongs to it. Write "Class label:" and the label, then "Input:" and the input. If the task needs no input, write only the class label.

Task: Classify the sentiment of the sentence into positive, negative or mixed.
Class label: Mixed
Input: I enjoy the flavor of the restaurant but their service is too slow.

Task: Tell me if the number is even or odd.
Class label: Even
Input: 42

Task: {instruction}
"""
_TASK_MARK = re.compile(r"(?:^|\n)\s*(?:\**Task\s*\d+\**|\d+)\s*[:.)]\s*", re.IGNORECASE)
_FIELD = re.compile(r"^\s*(Input|Output|Class label)\s*:\s*", re.IGNORECASE | re.MULTILINE)


@dataclass
class Task:
    id: str
    instruction: str
    input: str = ""
    output: str = ""
    seed: bool = False
    tokens: list[str] = field(default_factory=list)


def seed_task(record: dict) -> Task:
    """A seed conversation as a task: its user turn split into instruction and input."""
    prompt = [m for m in record["messages"] if m["role"] == "user"][-1]["content"]
    inp = input_block(prompt) or ""
    instruction = prompt.partition("\n\n")[0] if inp else prompt
    return Task(record["id"], instruction.strip(), inp.strip(), record["messages"][-1]["content"], True,
                tokens(instruction))


def generation_request(shown: list[Task]) -> list[dict]:
    listing = "\n".join(f"Task {i}: {' '.join(t.instruction.split())}" for i, t in enumerate(shown, 1))
    content = GENERATE_PROMPT.format(next=len(shown) + 1, last=2 * len(shown), tasks=listing)
    return [msg("user", content)]


def parse_instructions(reply: str | None) -> list[str]:
    """'Task 9: ...\\nTask 10: ...' (or a numbered list) -> instructions; a reply without any
    marker is one instruction; text before the first marker (a preamble) is dropped."""
    if not reply:
        return []
    parts = _TASK_MARK.split(reply)
    chunks = parts[1:] if len(parts) > 1 else parts
    return [" ".join(c.strip().split("\n\n")[0].split()) for c in chunks if c.strip()]


def is_classification(reply: str | None) -> bool:
    return bool(reply) and reply.strip().lower().lstrip("*: ").startswith("yes")


def parse_fields(reply: str | None) -> dict[str, str]:
    """{'input', 'output', 'class label'} of an instance reply; the first of each field counts."""
    if not reply:
        return {}
    parts = _FIELD.split(reply)
    fields: dict[str, str] = {}
    for name, value in zip(parts[1::2], parts[2::2]):
        fields.setdefault(name.lower(), value.strip())
    if not fields and reply.strip():
        fields["output"] = reply.strip()  # "you can generate the output directly"
    return fields


def parse_instance(reply: str | None, classification: bool) -> tuple[str, str]:
    """(input, output): output-first replies carry the output as the class label."""
    fields = parse_fields(reply)
    if classification:
        label = fields.get("class label") or fields.get("output", "")
        return fields.get("input", ""), label.split("\n")[0].strip()
    inp = fields.get("input", "")
    return ("" if inp.lower().strip("<> ") in ("noinput", "none", "n/a") else inp), fields.get("output", "")


class SelfInstruct:
    def __init__(self, seeds: list[Task], p: SelfInstructParams, teacher: Teacher, rng: random.Random,
                 rejects: RejectWriter, license: str):
        self.p, self.teacher, self.rng, self.rejects, self.license = p, teacher, rng, rejects, license
        self.seeds, self.generated = seeds, []
        self.pool_tokens = [t.tokens for t in seeds]
        self.pool_ids = [t.id for t in seeds]
        self.records: list[dict] = []
        self.dropped: Counter = Counter()
        self.candidates = self.rounds = self.unused = 0

    def drop(self, candidate: dict, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self.rejects.add(candidate, f"{METHOD}.{reason}", detail)

    def sample_shown(self) -> list[Task]:
        """`human_tasks` seeds + generated tasks (seeds again while too few are generated), shuffled."""
        n_machine = min(self.p.in_context_tasks - self.p.human_tasks, len(self.generated))
        n_human = min(self.p.in_context_tasks - n_machine, len(self.seeds))
        shown = self.rng.sample(self.seeds, n_human) + self.rng.sample(self.generated, n_machine)
        self.rng.shuffle(shown)
        return shown

    def instruction_verdict(self, text: str, pending: list[list[str]]) -> F.Verdict:
        p = self.p
        for check in (lambda: F.language_check(text), lambda: F.start_check(text),
                      lambda: F.length_check(text, p.min_instruction_words, p.max_instruction_words),
                      lambda: F.blocklist_check(text, p.blocklist, p.blocked_prefixes)):
            verdict = check()
            if verdict:
                return verdict
        verdict, where = F.rouge_check(tokens(text), self.pool_tokens + pending, p.max_similarity)
        if verdict is None:
            return None
        near = self.pool_ids[where] if where < len(self.pool_ids) else "a new task of this round"
        return verdict[0], f"{verdict[1]} ({near})"

    def round(self, r: int) -> int:
        """One round; returns the number of tasks it added to the pool."""
        shown_sets = [self.sample_shown() for _ in range(self.p.prompts_per_round)]
        replies = self.teacher.ask([Request(generation_request(s), salt=f"{METHOD}:{r}:{j}")
                                    for j, s in enumerate(shown_sets)])
        new: list[tuple[str, list[str]]] = []  # (instruction, in-context parents)
        pending: list[list[str]] = []
        for shown, reply in zip(shown_sets, replies):
            if reply is None:
                self.drop({"round": r}, *F.TEACHER_FAILED)
                continue
            for text in parse_instructions(reply):
                self.candidates += 1
                verdict = self.instruction_verdict(text, pending)
                if verdict:
                    self.drop({"instruction": text, "round": r}, *verdict)
                    continue
                new.append((text, [t.id for t in shown]))
                pending.append(tokens(text))
        return self.add_instances(r, new)

    def add_instances(self, r: int, new: list[tuple[str, list[str]]]) -> int:
        if not new:
            return 0
        labels = self.teacher.ask([Request([msg("user", CLASSIFY_PROMPT.format(instruction=t))]) for t, _ in new],
                                  max_new_tokens=4, temperature=0.0)
        kinds = [is_classification(x) for x in labels]
        prompts = [(OUTPUT_FIRST_PROMPT if clf else INPUT_FIRST_PROMPT).format(instruction=t)
                   for (t, _), clf in zip(new, kinds)]
        replies = self.teacher.ask([Request([msg("user", q)], salt=f"{METHOD}:{r}") for q in prompts])
        added = 0
        for (text, parents), clf, reply in zip(new, kinds, replies):
            if len(self.records) >= self.p.target:
                self.unused += 1  # passed, but the target is reached: not a reject
                continue
            inp, out = parse_instance(reply, clf)
            candidate = {"instruction": text, "input": inp, "output": out, "classification": clf, "round": r}
            verdict = F.TEACHER_FAILED if reply is None else F.instance_check(text, inp, out, self.p.max_output_words)
            if verdict:
                self.drop(candidate, *verdict)
                continue
            record = conversation_record(
                [msg("user", instruction_prompt(text, inp)), msg("assistant", out)], task=SOURCE, source=SOURCE,
                license=self.license, origin=f"synthesize:{METHOD}:round{r}",
                synthetic={"method": METHOD, "teacher": self.teacher.label, "round": r, "parents": parents,
                           "classification": clf},
            )
            task = Task(record["id"], text, inp, out, False, tokens(text))
            self.generated.append(task)
            self.pool_tokens.append(task.tokens)
            self.pool_ids.append(task.id)
            self.records.append(record)
            added += 1
        return added

    def run(self) -> list[dict]:
        for r in range(1, self.p.max_rounds + 1):
            added = self.round(r)
            log.info("self_instruct round %d: +%d tasks (%d/%d), %d dropped so far", r, added, len(self.records),
                     self.p.target, sum(self.dropped.values()))
            self.rounds = r
            if len(self.records) >= self.p.target:
                break
        return self.records

    def metrics(self) -> dict:
        return {"rounds": self.rounds, "candidates": self.candidates, "kept": len(self.records),
                "unused_over_target": self.unused, "dropped": dict(sorted(self.dropped.items()))}
