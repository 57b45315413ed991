"""`hitl eval CANDIDATE` and `hitl models list|promote|rollback|history|challenger|lineage|canary`."""

import getpass
import json
from pathlib import Path

import typer

from core.db import migrate, session_scope
from core.settings import get_settings

app = typer.Typer(help="Model registry: versions, aliases, promotion and rollback.", no_args_is_help=True)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {getattr(exc, 'detail', exc)}", err=True)
    raise typer.Exit(1)


def eval_command(
    candidate: str = typer.Argument(..., help="Registered model version to evaluate against the champion."),
    snapshot: Path = typer.Option(None, help="Dataset snapshot dir (default: the version's snapshot)."),
    policy: Path = typer.Option(None, help="Gate policy YAML merged over the default (or HITL_GATE_POLICY)."),
    decide: bool = typer.Option(True, help="Apply the decision: promote / challenger / insufficient_evidence "
                                           "(held as a candidate) / reject."),
) -> None:
    """Run the evaluation gates; write report.json + report.html and store them with the version.

    Decisions: promoted (or challenger with canary), insufficient_evidence (a required gate had too little
    data: not promoted, exit 3), rejected (exit 2)."""
    from evaluators.gate import evaluate_version, load_policy

    migrate()
    try:
        report = evaluate_version(candidate, snapshot=snapshot, policy=load_policy(policy), actor=_actor(),
                                  decide_now=decide)
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not traced
        _fail(exc)
    for r in report["results"]:
        ci = f" bounds [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]" if r["ci"] else ""
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        mark = {True: "pass", False: "FAIL"}.get(r["passed"]) or (
            "insufficient" if r.get("evidence") == "insufficient" else "n/a")
        n = f" n={r['n']}" + (f"/{r['min_n']}" if r.get("min_n") else "")
        typer.echo(f"{r['name']:<17} {mark:<4} {value}{ci} (threshold {r['threshold']}){n} {r['note']}")
    typer.echo(f"decision: {report.get('decision') or report.get('outcome')}  "
               f"(gates {report.get('timings', {}).get('total_s')} s)")
    for reason in report["reasons"]:
        typer.echo(f"  - {reason}")
    typer.echo(f"report: {report['report_paths']['html']}")
    if report.get("outcome") == "insufficient_evidence":
        raise typer.Exit(3)
    if not report["passed"]:
        raise typer.Exit(2)


@app.command("list")
def list_cmd() -> None:
    """Versions, newest first, with status and aliases."""
    from evaluators import registry

    migrate()
    with session_scope() as session:
        for row, aliases in registry.list_versions(session):
            decision = (row.gate_report or {}).get("decision", "")
            typer.echo(f"{row.version:<40} {row.status:<9} {','.join(aliases):<20} parent={row.parent} "
                       f"run={row.run_id} {decision}")


@app.command()
def promote(version: str, reason: str = typer.Option("", help="Why (kept in the alias history)."),
            force: bool = typer.Option(False, help="Promote even a rejected version.")) -> None:
    """Make VERSION the champion (serving hot-swaps within seconds)."""
    from evaluators import registry

    migrate()
    try:
        with session_scope() as session:
            event = registry.promote(session, version, actor=_actor(), reason=reason, force=force)
            typer.echo(f"champion: {event.previous_version} -> {event.version}")
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


@app.command()
def rollback(reason: str = typer.Option("", help="Why (kept in the alias history)."),
             to: str = typer.Option(None, help="Version to restore (default: the previous champion).")) -> None:
    """Restore the previous champion in one transaction."""
    from evaluators import registry

    migrate()
    try:
        with session_scope() as session:
            event = registry.rollback(session, actor=_actor(), reason=reason, to=to)
            typer.echo(f"champion: {event.previous_version} -> {event.version}")
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


@app.command()
def history(alias: str = typer.Option(None, help="champion or challenger"), limit: int = 50) -> None:
    """Alias history: when, which alias, from → to, who, why."""
    from evaluators import registry

    migrate()
    with session_scope() as session:
        for e in registry.history(session, alias, limit):
            typer.echo(f"{e.created_at:%Y-%m-%d %H:%M:%S} {e.alias:<10} {e.action:<8} {e.previous_version} -> "
                       f"{e.version}  by {e.actor}: {e.reason}")


@app.command()
def challenger(version: str, reason: str = typer.Option("")) -> None:
    """Start a canary: point the `challenger` alias at VERSION."""
    from evaluators import registry

    migrate()
    try:
        with session_scope() as session:
            registry.set_challenger(session, version, actor=_actor(), reason=reason)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    typer.echo(f"challenger: {version}")


@app.command("lineage")
def lineage_cmd(version: str) -> None:
    """Print version → run → snapshot → feedback ids as JSON."""
    from evaluators.lineage import lineage

    migrate()
    with session_scope() as session:
        typer.echo(json.dumps(lineage(session, get_settings(), version), indent=2, default=str))


@app.command()
def canary() -> None:
    """One canary tick: compare live feedback, promote or roll back the challenger when the evidence is clear."""
    from evaluators.tasks import canary_job

    migrate()
    typer.echo(json.dumps(canary_job(), indent=2, default=str))
