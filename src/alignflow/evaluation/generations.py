"""eval's generations: every model (base, SFT, candidate, champion) answers the same benign,
harmful and verifiable-constraint prompts with the same sampling seed(s) (eval.seeds), one model (pair) in memory
at a time."""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from alignflow.config import Params
from alignflow.evaluation import metrics as M
from alignflow.evaluation.champion import fetch_champion
from alignflow.evaluation.inputs import POLICY_DIR, SFT_DIR, EvalInputs
from alignflow.evaluation.policy_metrics import implicit_accuracy, kl_vs_sft

if TYPE_CHECKING:
    from alignflow.evaluation.registry import RegisteredVersion

log = logging.getLogger(__name__)

CANDIDATE = "policy"  # the model name used in tables and plots for the candidate


def model_key(key: str, model: str) -> str:
    """A per-model metric's name: unsuffixed for the candidate, `key`_`model` for the others."""
    return key if model == CANDIDATE else f"{key}_{model}"


@dataclass
class Generated:
    """One model's responses on the benign (test) prompts, the harmful prompts and the
    verifiable-constraint prompts."""

    name: str
    responses: list[str]
    finished: list[bool]
    harmful: list[str]
    rewards: list[float] = field(default_factory=list)
    backend: str = "hf"  # the generation engine that wrote the responses
    judge_scores: list[float] = field(default_factory=list)
    constrained: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(M.words(r)) for r in self.responses]


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    return [seeds] if isinstance(seeds, int) else list(seeds)


def seed_chunks(prompts: Sequence, seeds: list[int]):
    """(seed, its prompts) from a seed-major list (EvalInputs.repeated): the j-th 1/len(seeds) of it."""
    n = len(prompts) // len(seeds)
    return [(seed, prompts[j * n:(j + 1) * n]) for j, seed in enumerate(seeds)]


def answer_per_seed(name: str, backend: str, benign, harmful, constrained, seeds: int | Sequence[int],
                    answer) -> Generated:
    """A model's Generated from `answer(prompts, seed) -> [(text, finished)]`, one batched call per
    sampling seed over the benign, harmful and constraint prompts together. With several seeds the
    prompt lists are seed-major (EvalInputs.repeated)."""
    out = Generated(name, [], [], [], backend=backend)
    for (seed, b), (_, h), (_, c) in zip(*(seed_chunks(x, seed_list(seeds)) for x in (benign, harmful, constrained))):
        prompts = [*b, *h, *c]
        answers = answer(prompts, seed) if prompts else []
        nb, nh = len(b), len(b) + len(h)
        out.responses += [text for text, _ in answers[:nb]]
        out.finished += [finished for _, finished in answers[:nb]]
        out.harmful += [text for text, _ in answers[nb:nh]]
        out.constrained += [text for text, _ in answers[nh:]]
    return out


def generate_all(name: str, generator, benign: list[list[dict]], harmful: list[list[dict]],
                 ep, seeds: int | Sequence[int], constrained: list[list[dict]] = ()) -> Generated:
    """One model's answers to the benign, harmful and constraint prompts (answer_per_seed)."""
    started = time.perf_counter()

    def answer(prompts, seed):
        gens = generator.generate_with_details(prompts, n=1, max_new_tokens=ep.max_new_tokens, temperature=ep.temperature,
                                               top_p=ep.top_p, seed=seed, batch_size=ep.batch_size, progress=True)
        return [(g[0].text, g[0].finished) for g in gens]

    out = answer_per_seed(name, generator.name, benign, harmful, constrained, seeds, answer)
    log.info("%s: %d generations (%d seed(s)) with %s in %.1fs", name,
             len(out.responses) + len(out.harmful) + len(out.constrained), len(seed_list(seeds)), generator.name,
             time.perf_counter() - started)
    return out


def eval_seeds(params: Params) -> list[int]:
    """The sampling seeds every model answers with: eval.seeds, else the top-level seed."""
    return list(params.eval.seeds or [params.seed])


def eval_backend(params: Params) -> str:
    from alignflow.rlhf.generation import choose_backend

    return choose_backend(params.eval.backend, param="eval.backend")


def generator_for(ref: str, params: Params, wanted: str | None = None, param: str = "eval.backend"):
    """The generator for model `ref` on the back end `wanted` (default eval.backend; `param` names
    it in errors); a ct2 one also scores log-probs (`score`)."""
    from alignflow.rlhf.generation import choose_backend, make_generator

    wanted = wanted or params.eval.backend
    return make_generator(ref, choose_backend(wanted, param=param), trust_remote_code=params.model.trust_remote_code,
                          dtype=params.model.dtype, compute_type=params.model.engine_compute_type,
                          fallback=wanted == "auto", param=param)


class BestOfN:
    """A best_of_n policy (kind best_of_n): the align stage's BestOfNPolicy — n samples, the reward
    model picks — with the EOS flag taken from the text (the sampler does not report it)."""

    def __init__(self, model_dir: Path, params: Params):
        from alignflow.rlhf.best_of_n import BestOfNPolicy

        self.policy = BestOfNPolicy.from_dir(model_dir, backend=eval_backend(params),
                                             compute_type=params.model.engine_compute_type)
        self.n = self.policy.n

    def generate(self, name: str, benign, harmful, ep, seeds: int | Sequence[int], constrained=()) -> Generated:
        from alignflow.rlhf.judges import rule_penalties

        def answer(prompts, seed):
            texts = self.policy.generate(prompts, max_new_tokens=ep.max_new_tokens, seed=seed, batch_size=ep.batch_size)
            return [(text, not rule_penalties(text)["truncated"]) for text in texts]

        return answer_per_seed(name, self.policy.generator.name, benign, harmful, constrained, seeds, answer)


def hf_model(generator, params: Params):
    """The HF model behind a generator (loaded when the generator is an engine)."""
    return generator.model if generator.name == "hf" else load_model(generator.model_ref, params)[0]


def reference_engine(sft_engine, params: Params):
    """The policy's DPO reference on the engine: the base its adapter was trained on (HF disables
    the adapter instead), which the pipeline's align makes models/sft; else the SFT engine."""
    from alignflow.models import read_meta
    from alignflow.models.specs import resolve_base_ref

    meta = read_meta(POLICY_DIR) or {}
    if not meta.get("adapter") or not meta.get("base"):
        return sft_engine
    base = resolve_base_ref(meta["base"], POLICY_DIR)
    if Path(base).resolve() == SFT_DIR.resolve():
        return sft_engine
    return generator_for(base, params)


def load_model(ref: str, params: Params):
    from alignflow.models import load_causal_lm

    return load_causal_lm(ref, dtype=params.model.dtype, trust_remote_code=params.model.trust_remote_code)


def _generate_champion(cdir: Path, params: Params, benign, harmful, constrained) -> Generated:
    from alignflow.models import read_meta

    ep = params.eval
    cmeta = read_meta(cdir) or {}
    if cmeta.get("kind") == "best_of_n":
        return BestOfN(cdir, params).generate("champion", benign, harmful, ep, eval_seeds(params), constrained)
    return generate_all("champion", generator_for(str(cdir), params), benign, harmful, ep, eval_seeds(params),
                        constrained)


def generate_models(params: Params, inputs: EvalInputs, champion: RegisteredVersion | None,
                    candidate_version: str | None, metrics: dict, notes: list[str]) -> dict[str, Generated]:
    """Generations of base, SFT, candidate and champion (in table order); KL and implicit accuracy
    while the candidate and SFT are both loaded. One model (pair) in memory at a time.

    `champion`: the registry's `champion` version as eval read it at its start (None: none)."""
    from alignflow.models import ModelSpecError, read_meta

    ep, seeds = params.eval, eval_seeds(params)
    benign, harmful, pairs, constrained = inputs.benign, inputs.harmful, inputs.pairs, inputs.constrained
    gens: dict[str, Generated] = {}
    if ep.include_base:
        gens["base"] = generate_all("base", generator_for(params.model.base, params), benign, harmful, ep, seeds,
                                    constrained)
        gc.collect()

    sft = generator_for(str(SFT_DIR), params)
    gens["sft"] = generate_all("sft", sft, benign, harmful, ep, seeds, constrained)
    if (read_meta(POLICY_DIR) or {}).get("kind") == "best_of_n":
        bon = BestOfN(POLICY_DIR, params)
        candidate = bon.generate(CANDIDATE, benign, harmful, ep, seeds, constrained)
        metrics["kl_vs_sft"] = M.best_of_n_kl_bound(bon.n)  # vs its sampling policy (the SFT)
        notes.append(f"best-of-{bon.n} candidate: kl_vs_sft is the analytic bound log n − (n−1)/n; "
                     "no implicit accuracy (no trained log-ratio)")
        del bon
    else:
        policy = generator_for(str(POLICY_DIR), params)
        candidate = generate_all(CANDIDATE, policy, benign, harmful, ep, seeds, constrained)
        # Log-probs on the engine that generated when it scores (CTranslate2: the same numbers
        # within 1e-3, faster), else on HF; in one engine for policy and SFT alike.
        on_engine = policy.name == sft.name and hasattr(policy, "score")
        pol, ref = (policy, sft) if on_engine else (hf_model(policy, params), hf_model(sft, params))
        kl = kl_vs_sft(pol, ref, policy.tokenizer, benign, candidate.responses, ep)
        metrics.update(kl_vs_sft=kl["k3_seq"], kl_vs_sft_k1=kl["k1_seq"], kl_vs_sft_per_token=kl["k3_token"])
        if pairs:
            metrics["policy_implicit_accuracy"] = implicit_accuracy(
                pol, reference_engine(ref, params) if on_engine else ref, policy.tokenizer, pairs, ep)
        del policy, pol
    del sft
    gc.collect()

    if params.tracking.register_models and ep.compare_champion:
        with tempfile.TemporaryDirectory(prefix="alignflow-eval-") as tmp:
            fetched = fetch_champion(champion, params, candidate_version, Path(tmp))
            if fetched is not None:
                version, cdir = fetched
                try:
                    gens["champion"] = _generate_champion(cdir, params, benign, harmful, constrained)
                    metrics["champion_version"] = int(version)
                except (ModelSpecError, OSError, ValueError, KeyError) as err:
                    # e.g. an adapter whose base (models/sft) was retrained since: a broken champion
                    # must not block judging the candidate (the gate then compares with SFT)
                    log.warning("champion v%s cannot be loaded: %s", version, err)
                    notes.append(f"champion v{version} could not be loaded ({err}); compared with SFT instead")
                gc.collect()
    gens[CANDIDATE] = candidate
    return gens
