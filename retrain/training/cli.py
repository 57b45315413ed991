"""`hitl retrain …` and `hitl scheduler`."""

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core.db import migrate, session_scope
from retrain.training import service, tasks
from retrain.training.config import ConfigError, describe, load_config, to_dict
from retrain.training.models import FINISHED

app = typer.Typer(help="Fine-tune the champion on the feedback (TRL SFT / DPO / KTO + LoRA).", no_args_is_help=True)
console = Console()


@app.command("run")
def run(
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with RetrainConfig values."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a field: sft.learning_rate=1e-4 (repeatable)."),
    snapshot: Path = typer.Option(None, help="Train on this snapshot directory instead of building one."),
    detach: bool = typer.Option(False, help="Start the run and return at once."),
) -> None:
    """Retrain now (ignores the new-feedback minimum, respects the lock); shows progress and the candidate."""
    migrate()
    overrides = list(set_) + ([f"snapshot_path={snapshot.resolve()}"] if snapshot else [])
    try:
        data = to_dict(load_config(config, overrides))
        started = time.monotonic()
        record = tasks.start_manual_run(data)
    except (ConfigError, tasks.RetrainBusy) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"retrain run {record.id} started; log: {service.run_dir(_settings(), record.id) / 'run.log'}")
    if detach:
        return
    final = follow(record.id)
    elapsed = time.monotonic() - started
    console.print(f"run {final.id}: [bold]{final.status}[/bold] in {elapsed:.0f} s")
    if final.reason:
        console.print(f"reason: {final.reason}")
    if final.error:
        console.print(f"[red]{final.error.splitlines()[0]}[/red]")
    if final.candidate_version:
        with session_scope() as session:
            from service.models import ModelVersion

            version = session.get(ModelVersion, final.candidate_version)
            console.print(f"candidate {version.version}: adapter {version.adapter_path} on {version.base_path}")
    if final.gate:
        console.print(f"gate: {final.gate.get('decision') or final.gate.get('note') or final.gate}")
    raise typer.Exit(0 if final.status in ("succeeded", "promoted", "rejected", "insufficient_evidence", "skipped") else 1)


def follow(run_id: int, poll_s: float = 1.0):
    """Progress bar per stage from the run's per-step metrics, until the run finishes."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        bars: dict[str, int] = {}
        while True:
            with session_scope() as session:
                record = service.get_run(session, run_id)
                session.expunge(record)
            for event in (record.metrics or {}).get("steps", [])[-50:]:
                tag = event.get("stage", "train")
                if tag not in bars:
                    bars[tag] = progress.add_task(tag, total=event.get("max_steps") or None, info="")
                info = " ".join(f"{k}={event[k]:.4g}" for k in ("loss", "eval_loss") if k in event)
                progress.update(bars[tag], completed=event.get("step", 0), total=event.get("max_steps") or None,
                                **({"info": info} if info else {}))
            if record.status in FINISHED:
                return record
            time.sleep(poll_s)


@app.command("list")
def list_runs(limit: int = typer.Option(20, help="How many runs.")) -> None:
    """Recent runs."""
    with session_scope() as session:
        runs, _ = service.list_runs(session, limit)
        for r in runs:
            typer.echo(f"{r.id:>5} {r.status:<10} {r.trigger:<9} {r.created_at:%Y-%m-%d %H:%M} "
                       f"{r.candidate_version or '-':<24} {(r.reason or r.error or '')[:60]}")


@app.command("plan")
def plan(
    config: Path = typer.Option(None, "--config", "-c", help="YAML file with RetrainConfig values."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a field: sft.min_examples=128 (repeatable)."),
    snapshot: Path = typer.Option(None, help="Plan on this snapshot directory instead of building one."),
) -> None:
    """What a run would train now: stages, and per stage the optimizer steps, tokens, learning rate and why."""
    from retrain.datasets.schemas import BuildOptions
    from retrain.datasets.service import build_snapshot
    from retrain.training.plan import size_stages, snapshot_plan
    from service.service import ensure_champion

    migrate()
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    with session_scope() as session:
        path = snapshot.resolve() if snapshot else Path(
            build_snapshot(session, _settings(), BuildOptions(**cfg.snapshot_options)).path)
        base_path = ensure_champion(session, _settings()).base_path
    result = snapshot_plan(path, cfg)
    size_stages(result, cfg, base_path)
    console.print(f"snapshot {result['snapshot_path']}: {result['counts']}")
    for stage in result["stages"]:
        b = stage["budget"]
        console.print(f"[bold]{stage['method']}[/bold]: {stage['train_rows']} train, {stage['validation_rows']} "
                      f"validation rows; {b['steps']} optimizer steps x {b['examples_per_step']} examples "
                      f"({b['passes']:g} passes, {b['tokens']} tokens), learning rate {b['learning_rate']:.2g} "
                      f"- {stage['reason']}")
        for line in b["why"]:
            console.print(f"    {line}")
    for skipped in result["skipped"]:
        console.print(f"{skipped['method']}: skipped ({skipped['reason']})")
    if result.get("search"):
        console.print(f"search: {result['search']['reason']} (factors {result['search']['lr_factors']})")


@app.command("config")
def show_config() -> None:
    """Every config field with its default and help (YAML keys for --config / --set)."""
    for name, default, help_ in describe(load_config()):
        typer.echo(f"{name} = {default!r}\n    {help_}")


def _settings():
    from core.settings import get_settings

    return get_settings()
