"""Gate policy and the decision: run the evaluators for a candidate against the champion (and the lineage's
base), write the report, then promote (or make it challenger when canary is on), hold it for lack of
evidence, or reject it, in one transaction.

Decision: any required gate failed -> `rejected`; else any required gate with insufficient evidence ->
`insufficient_evidence` (not promoted, not rejected: the version stays a candidate); else `promoted` /
`challenger`. Gates that do not apply (no data of their kind in the snapshot) do not block."""

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session

from core.db import session_scope
from core.models import utcnow
from core.settings import Settings, get_settings
from evaluators import cumulative, fewshot, forgetting, golden, heldout, judge, preference, registry
from evaluators import policy as P
from evaluators.context import Context, LazyScorer
from evaluators.report import write_report
from evaluators.result import INSUFFICIENT, NOT_APPLICABLE, EvalResult
from evaluators.scoring import Scorer
from service import service as serving
from service.models import ModelVersion

log = logging.getLogger(__name__)
DEFAULT_POLICY = P.DEFAULT_POLICY
EVALUATORS = {"heldout": heldout.run, "preference": preference.run, "forgetting": forgetting.run,
              "domain_forgetting": forgetting.run_domain, "cumulative": cumulative.run, "golden": golden.run,
              "judge": judge.run, "fewshot": fewshot.run}
PROMOTED, CHALLENGER, REJECTED, INSUFFICIENT_EVIDENCE = "promoted", "challenger", "rejected", "insufficient_evidence"
PASSED, FAILED = "passed", "failed"  # outcomes of `decide` before the registry is touched


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_policy(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Default policy, merged with the file named by `path` / HITL_GATE_POLICY, then `overrides`; validated."""
    policy = P.defaults()
    path = path or get_settings().gate_policy
    if path:
        policy = _merge(policy, yaml.safe_load(Path(path).read_text()) or {})
    policy = _merge(policy, overrides or {})
    P.validate(policy)
    return policy


def decide(results: list[EvalResult], policy: dict) -> tuple[str, list[str]]:
    """`passed`, `failed` or `insufficient_evidence`, with the reasons (what failed, or what is missing).

    A required gate that failed fails the candidate; one that did not decide (too little data, missing data,
    not run) leaves it without evidence; one that does not apply is skipped. An optional gate that ran and
    failed fails it too (judge only when trusted), unless the policy lists it as `informative`."""
    by_name = {r.name: r for r in results}
    failed, missing = [], []
    for name in policy["required"]:
        result = by_name.get(name)
        if result is None:
            missing.append(f"{name}: did not run (not in the policy's evaluators)")
        elif result.evidence == NOT_APPLICABLE and result.passed is None:
            continue
        elif result.passed is False:
            failed.append(_failure(result))
        elif result.passed is None or result.evidence == INSUFFICIENT:
            missing.append(_missing(result))
    for result in results:
        if result.name not in policy["required"] + policy.get("informative", []) and result.passed is False:
            failed.append(_failure(result))
    if failed:
        return FAILED, failed + missing
    if missing:
        return INSUFFICIENT_EVIDENCE, missing
    return PASSED, []


def _failure(result: EvalResult) -> str:
    value = "n/a" if result.value is None else f"{result.value:.4g}"
    bound = f", bound {result.bound:.4g}" if result.bound is not None else ""
    return (f"{result.name}: {result.metric} = {value}{bound} (threshold {result.threshold})"
            + (f"; {result.note}" if result.note else ""))


def _missing(result: EvalResult) -> str:
    need = f"; has {result.n}, needs {result.min_n}" if result.min_n else ""
    return f"{result.name}: insufficient evidence{need}" + (f" ({result.note})" if result.note else "")


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


def _scorer(row: ModelVersion, settings: Settings, batch_size: int) -> LazyScorer:
    return LazyScorer(row.version, lambda: Scorer.load(row.version, row.base_path, row.adapter_path, settings.device,
                                                       batch_size=batch_size))


def _section(policy: dict, name: str) -> dict:
    cfg = dict(policy.get(name) or {})
    if name == "cumulative":  # the forgetting set and decoding unless the section names its own
        general = P.section("forgetting", policy.get("forgetting"))
        for key in ("path", "max_examples", "max_new_tokens"):
            if cfg.get(key) is None:
                cfg[key] = getattr(general, key)
    return cfg


def run_gates(candidate: ModelVersion, champion: ModelVersion, snapshot: Path | None, policy: dict,
              human: list[dict] | None = None, settings: Settings | None = None,
              reference: ModelVersion | None = None, ancestry: list[dict] | None = None) -> dict[str, Any]:
    """Run every enabled evaluator, decide. Reads files (and the eval cache); writes only the eval cache.
    Models are loaded when first needed: a champion or base whose figures are all cached is never loaded."""
    settings = settings or get_settings()
    started = time.monotonic()
    batch = P.section("forgetting", policy.get("forgetting")).batch_size
    scorers = {candidate.version: _scorer(candidate, settings, batch), champion.version: _scorer(champion, settings, batch)}
    if reference is not None:
        scorers.setdefault(reference.version, _scorer(reference, settings, batch))
    ctx = Context(candidate=scorers[candidate.version], champion=scorers[champion.version], snapshot=snapshot,
                  human_comparisons=human or [], reference=scorers[reference.version] if reference else None,
                  ancestry=ancestry or [],
                  cache_dir=settings.data_dir / "eval-cache" if policy.get("cache", True) else None)
    results, timings = [], {}
    for name in policy["evaluators"]:
        log.info("evaluating %s vs %s: %s", candidate.version, champion.version, name)
        t0 = time.monotonic()
        results.append(EVALUATORS[name](ctx, _section(policy, name)))
        timings[name] = round(time.monotonic() - t0, 2)
    outcome, reasons = decide(results, policy)
    timings["total_s"] = round(time.monotonic() - started, 2)
    return {
        "candidate": candidate.version, "champion": champion.version, "snapshot": str(snapshot) if snapshot else None,
        "reference": reference.version if reference else None,
        "snapshot_hash": candidate.snapshot_hash, "run_id": candidate.run_id, "created_at": utcnow().isoformat(),
        "outcome": outcome, "passed": outcome == PASSED, "reasons": reasons, "required": list(policy["required"]),
        "not_applicable": [f"{r.name}: {r.note}" for r in results
                           if r.evidence == NOT_APPLICABLE and r.name in policy["required"]],
        "results": [r.to_dict() for r in results],
        "timings": timings, "cache": dict(ctx.stats),
        "models_loaded": sorted(v for v, s in scorers.items() if s.loaded),
        "policy": {k: v for k, v in policy.items() if not callable(v)} | {"judge": _printable(policy.get("judge"))},
    }


def _printable(cfg: Any) -> Any:
    return {k: ("<callable>" if callable(v) else v) for k, v in cfg.items()} if isinstance(cfg, dict) else cfg


def apply_decision(session: Session, report: dict[str, Any], policy: dict, actor: str) -> str:
    """Store the report with the version; promote, make challenger, hold (insufficient evidence: the version
    stays a candidate) or reject. Caller commits once."""
    version = registry.get_version(session, report["candidate"])
    current = serving.champion(session)
    report.setdefault("outcome", PASSED if report["passed"] else FAILED)
    if current is not None and current.version != report["champion"] and report["outcome"] != FAILED:
        report["decision"] = REJECTED
        report["reasons"].append(f"champion moved to {current.version} during evaluation; re-evaluate")
        report["passed"] = False
    if report.get("decision") == REJECTED or report["outcome"] == FAILED:
        report["decision"] = REJECTED
        registry.reject(session, version.version)
    elif report["outcome"] == INSUFFICIENT_EVIDENCE:
        report["decision"] = INSUFFICIENT_EVIDENCE  # not promoted, not rejected: re-evaluate with more data
    elif policy.get("canary", {}).get("enabled"):
        report["decision"] = CHALLENGER
        registry.set_challenger(session, version.version, actor=actor, reason="gates passed; canary started")
    else:
        report["decision"] = PROMOTED
        registry.promote(session, version.version, actor=actor, reason=summary(report))
    version.gate_report = json.loads(json.dumps(report, default=str))  # a fresh value, so the UPDATE is issued
    flag_modified(version, "gate_report")
    session.add(version)
    session.flush()
    return report["decision"]


def summary(report: dict[str, Any]) -> str:
    parts = [f"{r['name']}={r['value']:.3g}" for r in report["results"] if r["value"] is not None]
    head = {PASSED: "gates passed: ", INSUFFICIENT_EVIDENCE: "insufficient evidence: "}.get(
        report.get("outcome") or (PASSED if report["passed"] else FAILED), "gates failed: ")
    return head + ", ".join(parts)


def ancestors(session: Session, row: ModelVersion) -> list[ModelVersion]:
    """The versions `row` descends from, following `parent` (nearest first, the registry root last)."""
    chain, seen, parent = [], {row.version}, row.parent
    while parent and parent not in seen:
        found = session.get(ModelVersion, parent)
        if found is None:
            break
        chain.append(found)
        seen.add(parent)
        parent = found.parent
    return chain


def _stored_accuracy(row: ModelVersion) -> tuple[float | None, str | None]:
    """A version's general-set accuracy from its own gate report (as the candidate then)."""
    for result in (row.gate_report or {}).get("results", []):
        if result.get("name") in ("cumulative", "forgetting") and "candidate_accuracy" in (result.get("details") or {}):
            return result["details"]["candidate_accuracy"], result["details"].get("set_hash")
    return None, None


def resolve_reference(session: Session, candidate: ModelVersion, champion: ModelVersion,
                      pinned: str | None) -> tuple[ModelVersion | None, list[dict]]:
    """The cumulative gate's reference (pinned, else the lineage's root) and the ancestry, root first."""
    chain = ancestors(session, candidate) or [champion, *ancestors(session, champion)]
    reference = registry.get_version(session, pinned) if pinned else (chain[-1] if chain else None)
    ancestry = []
    for row in reversed(chain):
        accuracy, digest = _stored_accuracy(row)
        ancestry.append({"version": row.version, "accuracy": accuracy, "set_hash": digest, "status": str(row.status)})
    return reference, ancestry


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
        reference, ancestry = resolve_reference(session, candidate, champion,
                                                P.section("cumulative", policy.get("cumulative")).reference)
        for row in {id(r): r for r in (candidate, champion, reference) if r is not None}.values():
            session.expunge(row)
    report = run_gates(candidate, champion, snapshot, policy, human, settings, reference, ancestry)
    report["report_paths"] = {k: str(v) for k, v in write_report(report, settings.data_dir / "reports" / version).items()}
    if decide_now:
        with session_scope() as session:
            apply_decision(session, report, policy, actor)
            if on_decision is not None:
                on_decision(session, report)
        write_report(report, settings.data_dir / "reports" / version)  # again, now with the decision
    return report


def measure_champion(settings: Settings | None = None, policy: dict | None = None) -> dict[str, Any]:
    """The champion's and its lineage reference's side of the gates that need no snapshot (general set,
    golden prompts), into the eval cache. A promoted candidate's side is already there (it was measured as the
    candidate); the base's is not before the first run, and a run computes it here, before training, so the
    gates after training compute only the candidate's side. Returns what was computed or found."""
    settings = settings or get_settings()
    policy = policy or load_policy()
    with session_scope() as session:
        champion = serving.ensure_champion(session, settings)
        reference, ancestry = resolve_reference(session, champion, champion,
                                                P.section("cumulative", policy.get("cumulative")).reference)
        for row in {id(r): r for r in (champion, reference) if r is not None}.values():
            session.expunge(row)
    report = run_gates(champion, champion, None, policy, [], settings, reference, ancestry)
    return {"champion": champion.version, "reference": report["reference"], "cache": report["cache"],
            "seconds": report["timings"]["total_s"]}


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
    return {"passed": report["passed"], "outcome": report.get("outcome"), "decision": report.get("decision"),
            "reasons": report["reasons"], "not_applicable": report.get("not_applicable", []),
            "candidate": report["candidate"], "champion": report["champion"], "reference": report.get("reference"),
            "report": report.get("report_paths"), "timings": report.get("timings"),
            "results": {r["name"]: {k: r.get(k) for k in ("metric", "value", "ci", "bound", "threshold", "passed",
                                                          "evidence", "n", "min_n", "candidate", "champion", "note")}
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
