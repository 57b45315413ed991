"""Gate policy and the decision: run the evaluators for a candidate against the champion, write the report,
then promote (or make it challenger when canary is on) or reject it, in one transaction."""

import copy
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session

from core.db import session_scope
from core.models import utcnow
from core.settings import Settings, get_settings
from evaluators import fewshot, forgetting, golden, heldout, judge, preference, registry
from evaluators.context import Context
from evaluators.report import write_report
from evaluators.result import EvalResult
from evaluators.scoring import Scorer
from service import service as serving
from service.models import ModelVersion

log = logging.getLogger(__name__)
DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.yaml"
EVALUATORS = {"heldout": heldout.run, "preference": preference.run, "forgetting": forgetting.run,
              "golden": golden.run, "judge": judge.run, "fewshot": fewshot.run}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_policy(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Default policy, merged with the file named by `path` / HITL_GATE_POLICY, then `overrides`."""
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    path = path or get_settings().gate_policy
    if path:
        policy = _merge(policy, yaml.safe_load(Path(path).read_text()) or {})
    return _merge(policy, overrides or {})


def decide(results: list[EvalResult], policy: dict) -> tuple[bool, list[str]]:
    """Pass when every required evaluator ran and passed; returns the reasons when not."""
    by_name, reasons = {r.name: r for r in results}, []
    for name in policy["required"]:
        result = by_name.get(name)
        if result is None or result.passed is None:
            reasons.append(f"{name}: did not run ({result.note if result else 'not enabled'})")
        elif not result.passed:
            reasons.append(_failure(result))
    for result in results:  # an optional evaluator that ran and failed blocks too (judge only when trusted)
        if result.name not in policy["required"] and result.passed is False and result.name != "fewshot":
            reasons.append(_failure(result))
    return not reasons, reasons


def _failure(result: EvalResult) -> str:
    return (f"{result.name}: {result.metric} = {result.value:.4g} (threshold {result.threshold})"
            + (f"; {result.note}" if result.note else ""))


def snapshot_dir(session: Session, settings: Settings, snapshot_hash: str | None) -> Path | None:
    """Where the candidate's training snapshot lies: the DatasetSnapshot row, else data_dir/datasets/<hash>."""
    if not snapshot_hash:
        return None
    try:
        from retrain.datasets.models import DatasetSnapshot
        from sqlmodel import select

        row = session.exec(select(DatasetSnapshot).where(DatasetSnapshot.hash == snapshot_hash)).first()
        if row is not None:
            return Path(row.path)
    except ImportError:
        pass
    return settings.data_dir / "datasets" / snapshot_hash


def run_gates(candidate: ModelVersion, champion: ModelVersion, snapshot: Path | None, policy: dict,
              human: list[dict] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Load both versions, run every enabled evaluator, decide. Reads files only; writes nothing."""
    settings = settings or get_settings()
    ctx = Context(
        candidate=Scorer.load(candidate.version, candidate.base_path, candidate.adapter_path, settings.device),
        champion=Scorer.load(champion.version, champion.base_path, champion.adapter_path, settings.device),
        snapshot=snapshot, human_comparisons=human or [],
    )
    results = []
    for name in policy["evaluators"]:
        log.info("evaluating %s vs %s: %s", candidate.version, champion.version, name)
        results.append(EVALUATORS[name](ctx, policy.get(name, {})))
    passed, reasons = decide(results, policy)
    return {
        "candidate": candidate.version, "champion": champion.version, "snapshot": str(snapshot) if snapshot else None,
        "snapshot_hash": candidate.snapshot_hash, "run_id": candidate.run_id, "created_at": utcnow().isoformat(),
        "passed": passed, "reasons": reasons, "required": list(policy["required"]),
        "results": [r.to_dict() for r in results],
        "policy": {k: v for k, v in policy.items() if not callable(v)} | {"judge": _printable(policy.get("judge"))},
    }


def _printable(cfg: Any) -> Any:
    return {k: ("<callable>" if callable(v) else v) for k, v in cfg.items()} if isinstance(cfg, dict) else cfg


def apply_decision(session: Session, report: dict[str, Any], policy: dict, actor: str) -> str:
    """Store the report with the version; promote, make challenger, or reject. Caller commits once."""
    version = registry.get_version(session, report["candidate"])
    current = serving.champion(session)
    if current is not None and current.version != report["champion"] and report["passed"]:
        report["decision"] = "rejected"
        report["reasons"].append(f"champion moved to {current.version} during evaluation; re-evaluate")
        report["passed"] = False
    if not report["passed"]:
        report.setdefault("decision", "rejected")
        registry.reject(session, version.version)
    elif policy.get("canary", {}).get("enabled"):
        report["decision"] = "challenger"
        registry.set_challenger(session, version.version, actor=actor, reason="gates passed; canary started")
    else:
        report["decision"] = "promoted"
        registry.promote(session, version.version, actor=actor, reason=summary(report))
    version.gate_report = json.loads(json.dumps(report, default=str))  # a fresh value, so the UPDATE is issued
    flag_modified(version, "gate_report")
    session.add(version)
    session.flush()
    return report["decision"]


def summary(report: dict[str, Any]) -> str:
    parts = [f"{r['name']}={r['value']:.3g}" for r in report["results"] if r["value"] is not None]
    return ("gates passed: " if report["passed"] else "gates failed: ") + ", ".join(parts)


def evaluate_version(version: str, *, snapshot: Path | None = None, policy: dict | None = None,
                     actor: str = "gate", decide_now: bool = True, settings: Settings | None = None,
                     on_decision=None) -> dict[str, Any]:
    """Evaluate a registered candidate against the current champion; write the JSON + HTML report;
    with `decide_now`, apply the decision (and `on_decision(session, report)`, in the same transaction).
    Returns the report (with `decision` and `report_paths`)."""
    settings = settings or get_settings()
    policy = policy or load_policy()
    with session_scope() as session:
        candidate = registry.get_version(session, version)
        champion = serving.ensure_champion(session, settings)
        if champion.version == candidate.version:
            raise ValueError(f"'{version}' is already the champion")
        snapshot = snapshot or snapshot_dir(session, settings, candidate.snapshot_hash)
        human = judge.human_comparisons(session) if policy.get("judge", {}).get("enabled") else []
        session.expunge(candidate)
        session.expunge(champion)
    report = run_gates(candidate, champion, snapshot, policy, human, settings)
    report["report_paths"] = {k: str(v) for k, v in write_report(report, settings.data_dir / "reports" / version).items()}
    if decide_now:
        with session_scope() as session:
            apply_decision(session, report, policy, actor)
            if on_decision is not None:
                on_decision(session, report)
        write_report(report, settings.data_dir / "reports" / version)  # again, now with the decision
    return report


def evaluate_and_decide(run_id: int) -> dict[str, Any]:
    """Entry point of the retrain pipeline: gate the run's candidate, record the decision on the run."""
    from retrain.training.models import RetrainRun

    settings = get_settings()
    with session_scope() as session:
        run = session.get(RetrainRun, run_id)
        if run is None or not run.candidate_version:
            raise ValueError(f"retrain run {run_id} has no candidate version")
        version = run.candidate_version
        snapshot = _run_snapshot(session, settings, run)
    gate: dict[str, Any] = {}

    def record(session: Session, report: dict[str, Any]) -> None:  # same transaction as the promotion
        gate.update(gate_summary(report))
        run = session.get(RetrainRun, run_id)
        run.gate = dict(gate)
        session.add(run)

    evaluate_version(version, snapshot=snapshot, actor=f"retrain-run:{run_id}", settings=settings,
                     on_decision=record)
    return gate


def gate_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The compact decision stored on the retrain run."""
    return {"passed": report["passed"], "decision": report.get("decision"), "reasons": report["reasons"],
            "candidate": report["candidate"], "champion": report["champion"], "report": report.get("report_paths"),
            "results": {r["name"]: {k: r[k] for k in ("metric", "value", "ci", "threshold", "passed", "candidate",
                                                      "champion", "note")}
                        for r in report["results"]}}


def _run_snapshot(session: Session, settings: Settings, run) -> Path | None:
    if getattr(run, "snapshot_id", None):
        try:
            from retrain.datasets.models import DatasetSnapshot

            row = session.get(DatasetSnapshot, run.snapshot_id)
            if row is not None:
                return Path(row.path)
        except ImportError:
            pass
    return snapshot_dir(session, settings, getattr(run, "snapshot_hash", None))
