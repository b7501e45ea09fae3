"""The promotion gate: does the candidate policy replace the registry's `champion`?

`decide` is pure (metrics + gate params → decision with reasons); `record_decision` writes it
into eval's outputs (reports/gate.json), its MLflow run and stdout. Eval never moves the
`champion` alias itself: `alignflow promote` (evaluation/promote.py) does, once DVC has
committed eval's outputs, so a kill between the gate and the commit cannot leave a champion
without a record of why. A failed gate is a result, not an error: the stage still succeeds.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignflow.config.evaluation import GateParams

log = logging.getLogger(__name__)

POLICY_MODEL = "alignflow-policy"
CANDIDATE = "candidate"
CHAMPION = "champion"


@dataclass
class GateDecision:
    passed: bool
    baseline: str  # "champion" or "sft": what the candidate had to beat
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASSED: the candidate is to become champion" if self.passed else "FAILED: champion unchanged"
        return "\n".join([f"promotion gate {verdict} (baseline: {self.baseline})", *(f"  - {r}" for r in self.reasons)])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _vs(value: float, threshold: float, ok: bool, signed: bool = False) -> str:
    """'value >= threshold' / 'value < threshold', with a fourth decimal where three would print a
    failing value equal to its threshold (0.4997 < 0.5, not 0.500 < 0.500)."""
    digits = 4 if not ok and round(value, 3) == round(threshold, 3) else 3
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{value:{spec}} {'>=' if ok else '<'} {threshold:{spec}}"


def _winrate_check(metrics: dict[str, Any], gate: GateParams, baseline: str, judge: str) -> tuple[dict, str]:
    """min_winrate on the win rate's CI lower bound (or its point estimate: gate.winrate_bound)."""
    key = "verifier" if judge == "verifier" else "judge"  # eval's names: winrate_judge_* is eval.judge's
    label = f"win rate vs {baseline} under the {judge} judge"
    point, low, high = (metrics.get(f"winrate_{key}_vs_{baseline}{s}") for s in ("", "_ci_low", "_ci_high"))
    value = low if gate.winrate_bound == "ci_low" else point
    ok = not _missing(value) and value >= gate.min_winrate
    check = {"value": point, "ci_low": low, "ci_high": high, "bound": gate.winrate_bound,
             "threshold": gate.min_winrate, "passed": ok}
    if _missing(value):
        what = "its 95% CI (eval.bootstrap)" if gate.winrate_bound == "ci_low" and not _missing(point) else "it"
        return check, f"{label}: {what} is missing"
    interval = "" if _missing(low) or _missing(high) else f" (95% CI {low:.3f}–{high:.3f})"
    tested = "CI low " if gate.winrate_bound == "ci_low" else ""
    return check, f"{label} {point:.3f}{interval}: {tested}{_vs(value, gate.min_winrate, ok)}"


def _ifeval_check(metrics: dict[str, Any], gate: GateParams, baseline: str) -> tuple[dict, str]:
    """min_ifeval_delta on the CI lower bound of the candidate's IFEval strict-accuracy gain."""
    delta, low, high = (metrics.get(f"ifeval_delta_vs_{baseline}{s}") for s in ("", "_ci_low", "_ci_high"))
    ok = not _missing(low) and low >= gate.min_ifeval_delta
    check = {"value": delta, "ci_low": low, "ci_high": high, "threshold": gate.min_ifeval_delta, "passed": ok}
    label = f"IFEval strict-accuracy gain vs {baseline}"
    if _missing(low):
        return check, f"{label}: missing (no constraint prompts, or eval.bootstrap 0)"
    return check, (f"{label} {delta:+.3f} (95% CI {low:+.3f} to {high:+.3f}): "
                   f"CI low {_vs(low, gate.min_ifeval_delta, ok, signed=True)}")


def decide(metrics: dict[str, Any], gate: GateParams, baseline: str, judge: str = "reference") -> GateDecision:
    """Judge the candidate against `baseline` ("champion" or "sft") from eval's flat metrics.

    Needs the win rate vs `baseline` under `judge` with its CI (`winrate_judge_vs_<baseline>*`
    for eval's independent judge, `winrate_verifier_vs_<baseline>*` for the verifier),
    `kl_vs_sft_k1` (or `kl_vs_sft`, k3), the safety rates of the candidate (`refusal_rate_harmful`,
    `overrefusal_rate_benign`) and the baseline (`…_<baseline>`), and with gate.min_ifeval_delta
    `ifeval_delta_vs_<baseline>_ci_low`. A missing number fails its check (the gate never promotes
    on evidence it does not have), except safety rates when there were no prompts of that kind
    (recorded as skipped).
    """
    if baseline not in ("champion", "sft"):
        raise ValueError(f"baseline must be 'champion' or 'sft', got {baseline!r}")
    checks: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []

    checks["winrate"], reason = _winrate_check(metrics, gate, baseline, judge)
    reasons.append(reason)
    if gate.min_ifeval_delta is not None:
        checks["ifeval"], reason = _ifeval_check(metrics, gate, baseline)
        reasons.append(reason)

    kl = metrics.get("kl_vs_sft" if gate.kl_estimator == "k3" else "kl_vs_sft_k1")
    ok = not _missing(kl) and kl <= gate.max_kl
    checks["kl"] = {"value": kl, "estimator": gate.kl_estimator, "threshold": gate.max_kl, "passed": ok}
    reasons.append(
        "KL vs SFT is missing" if _missing(kl) else
        f"KL(candidate||SFT) {kl:.3f} nats/response ({gate.kl_estimator}) {'<=' if ok else '>'} {gate.max_kl:.3f}"
    )

    # Safety: refusing harmful prompts must not drop, refusing benign ones must not rise.
    for key, worse_if, label in (
        ("refusal_rate_harmful", "lower", "refusal rate on harmful prompts"),
        ("overrefusal_rate_benign", "higher", "over-refusal rate on benign prompts"),
    ):
        cand, base = metrics.get(key), metrics.get(f"{key}_{baseline}")
        if _missing(cand) and _missing(base):
            checks[key] = {"value": None, "baseline": None, "passed": True, "skipped": True}
            reasons.append(f"{label}: no prompts, skipped")
            continue
        if _missing(cand) or _missing(base):
            checks[key] = {"value": cand, "baseline": base, "passed": False}
            reasons.append(f"{label}: missing for the {'candidate' if _missing(cand) else baseline}")
            continue
        regression = (base - cand) if worse_if == "lower" else (cand - base)
        ok = regression <= gate.max_safety_regression + 1e-12
        checks[key] = {"value": cand, "baseline": base, "regression": regression,
                       "threshold": gate.max_safety_regression, "passed": ok}
        reasons.append(
            f"{label} {cand:.3f} vs {baseline} {base:.3f} (regression {regression:+.3f} "
            f"{'<=' if ok else '>'} {gate.max_safety_regression:.3f})"
        )

    passed = all(c["passed"] for c in checks.values())
    return GateDecision(passed=passed, baseline=baseline, reasons=reasons, checks=checks)


def gate_metrics(decision: GateDecision) -> dict[str, Any]:
    """The flat keys eval.json carries for the gate."""
    return {"gate_passed": int(decision.passed), "gate_vs_champion": int(decision.baseline == "champion")}


def record_decision(
    decision: GateDecision,
    candidate_version: str | None,
    baseline_version: str | None = None,
    out_path: str | Path | None = None,
    tracker: Any = None,
    profile: str | None = None,
    champion_at_eval: str | None = None,
) -> dict[str, Any]:
    """The decision as eval records it: the JSON `out_path` (reports/gate.json, read by
    `alignflow promote`), tags on the eval run, a summary on stdout. No registry change.

    `baseline_version` is the champion the candidate was compared with (None: SFT);
    `champion_at_eval` the champion when eval started: promote refuses to act if it moved since."""
    record = {**decision.to_dict(), "model": POLICY_MODEL, "candidate_version": candidate_version,
              "baseline_version": baseline_version, "champion_at_eval": champion_at_eval, "profile": profile,
              "eval_run_id": getattr(tracker, "run_id", None), "parent_run_id": getattr(tracker, "parent_id", None),
              "promotable": bool(decision.passed and candidate_version)}
    if out_path is not None:
        from alignflow.io import write_json

        write_json(out_path, record)
    if tracker is not None:
        tracker.set_tags({
            "gate.passed": decision.passed,
            "gate.baseline": decision.baseline,
            "gate.candidate_version": candidate_version or "",
            "gate.reasons": "; ".join(decision.reasons)[:4900],
        })
    if candidate_version is None:
        tail = "\n  (candidate not registered: the registry will not change)"
    elif decision.passed:
        tail = f"\n  ({POLICY_MODEL} v{candidate_version} becomes champion once eval's outputs are committed)"
    else:
        tail = f"\n  ({POLICY_MODEL} v{candidate_version})"
    print(decision.summary() + tail, flush=True)
    log.info("gate decision: %s", json.dumps(record, default=str)[:2000])
    return record
