"""Where each stage reads and writes: the file contract of dvc.yaml, in one place.

Paths are relative to the project root (the working directory of every stage).
"""

from pathlib import Path

FORMATTED = Path("data/formatted")
PROMPTS_TRAIN = FORMATTED / "prompts_train.jsonl"
CONSTRAINT_PROMPTS_TRAIN = FORMATTED / "prompts_ifeval_train.jsonl"
PREFS_TRAIN_HUMAN = FORMATTED / "prefs_train.jsonl"
PREFS_TEST = FORMATTED / "prefs_test.jsonl"
HARMFUL_TEST = FORMATTED / "prompts_harmful_test.jsonl"

SFT_MODEL = Path("models/sft")
REWARD_MODEL = Path("models/reward")
POLICY_MODEL = Path("models/policy")
