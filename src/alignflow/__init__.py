"""alignflow: a versioned, scheduled and comparable RLHF pipeline."""

__version__ = "0.1.0"

STAGES = ("collect", "synthesize", "clean", "format", "sft", "sample", "rank", "reward", "align", "eval")
