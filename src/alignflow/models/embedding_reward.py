"""An embedding-backbone reward model: a frozen sentence encoder and a linear Bradley–Terry head.

r(prompt, response) = w · [e(last user turn ⏎ response), e(response)], e = the encoder's
normalised mean-pooled embedding (all-MiniLM-L6-v2, the reference judge's encoder, by default).
Only w is trained (training/embedding_reward.py), on embeddings computed once: on a CPU it ranks
held-out HH-RLHF pairs better per second of training than a LoRA on the 135M policy, whose steps
see a few dozen pairs in the time the encoder embeds every pair (README "A real run").

A models/reward directory of this kind holds alignflow_model.json (`backbone: embedding`, the
encoder) and head.safetensors; `alignflow.models.load_reward_model` returns it with no tokenizer,
and `rlhf.judges.score_with_reward_model` scores with it like any reward model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignflow.models.meta import META_FILE

HEAD_FILE = "head.safetensors"
BACKBONE = "embedding"


def encoder_path(encoder: str | None) -> str:
    """A sentence-transformers directory: `encoder`, or the embedded all-MiniLM-L6-v2 when None."""
    if encoder:
        return encoder
    from alignflow.models.specs import embedded_minilm_dir

    return str(embedded_minilm_dir())


def last_user_turn(prompt: Sequence[dict]) -> str:
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


class EmbeddingRewardModel:
    def __init__(self, encoder: str | None = None, max_seq_length: int = 128, weight: np.ndarray | None = None,
                 batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.encoder_spec, self.max_seq_length, self.batch_size = encoder, max_seq_length, batch_size
        self.encoder = SentenceTransformer(encoder_path(encoder), device="cpu", local_files_only=True)
        self.encoder.max_seq_length = max_seq_length
        self.weight = weight

    # The calls the pipeline makes on a reward model (an nn.Module): the encoder is frozen anyway.
    def eval(self) -> EmbeddingRewardModel:
        return self

    def requires_grad_(self, _: bool = False) -> EmbeddingRewardModel:
        return self

    @property
    def dim(self) -> int:
        return 2 * self.encoder.get_sentence_embedding_dimension()

    def features(self, prompts: Sequence[Sequence[dict]], responses: Sequence[str]) -> np.ndarray:
        """[e(last user turn ⏎ response), e(response)] per (prompt, response): (n, dim)."""
        with_context = [f"{last_user_turn(p)}\n{r}" for p, r in zip(prompts, responses)]
        emb = self.encoder.encode([*with_context, *responses], batch_size=self.batch_size, normalize_embeddings=True,
                                  show_progress_bar=False, convert_to_numpy=True)
        n = len(responses)
        return np.hstack([emb[:n], emb[n:]]).astype(np.float32)

    def score(self, prompts: Sequence[Sequence[dict]], responses: Sequence[str]) -> list[float]:
        if self.weight is None:
            raise ValueError("embedding reward model: no trained head")
        if not responses:
            return []
        return (self.features(prompts, responses) @ self.weight).astype(float).tolist()

    def save(self, out_dir: Path, meta: dict) -> Path:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": np.ascontiguousarray(self.weight, dtype=np.float32)}, str(out / HEAD_FILE))
        info = {**meta, "kind": "reward", "backbone": BACKBONE, "encoder": self.encoder_spec,
                "max_seq_length": self.max_seq_length, "features": ["last_user_turn+response", "response"],
                "adapter": False}
        (out / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, model_dir: Path, meta: dict) -> EmbeddingRewardModel:
        from safetensors.numpy import load_file

        weight = load_file(str(Path(model_dir) / HEAD_FILE))["weight"]
        return cls(meta.get("encoder"), int(meta.get("max_seq_length", 128)), weight)
