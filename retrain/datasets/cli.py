"""`hitl dataset build|show|list`. `list` prints per kind train/validation/test row counts. `hitl export`: the
feedback store as training data."""

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from core.db import migrate, session_scope
from core.settings import get_settings
from retrain.datasets.schemas import SPLITS, BuildOptions

app = typer.Typer(help="Build and inspect training dataset snapshots.", no_args_is_help=True)


@app.command("build")
def build(
    kinds: Annotated[list[str] | None, typer.Option("--kind", help="sft, dpo or kto (repeat); default all.")] = None,
    validation_fraction: Annotated[float, typer.Option(
        help="Target share of new question groups in validation (training's early stopping).")] = 0.1,
    test_fraction: Annotated[float, typer.Option(
        help="Target share of new question groups in test (read only by the gates).")] = 0.2,
    replay_fraction: Annotated[float, typer.Option(help="General replay rows per SFT train row.")] = 0.0,
    paraphrases: Annotated[int, typer.Option(help="Paraphrase variants per corrected prompt (needs an endpoint).")] = 0,
    anchors: Annotated[int, typer.Option(help="Latest unfaulted served replies kept as anchor rows (sft.anchor).")] = 0,
    max_tokens: Annotated[int, typer.Option(help="Longest example in tokens.")] = 2048,
    options_json: Annotated[str | None, typer.Option("--options", help="Full BuildOptions as JSON.")] = None,
) -> None:
    """Build a snapshot from the feedback store (identical content → the existing snapshot)."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from retrain.datasets import service

    opts = BuildOptions(**json.loads(options_json)) if options_json else BuildOptions(
        kinds=kinds or None, validation_fraction=validation_fraction, test_fraction=test_fraction,
        replay_fraction=replay_fraction,
        paraphrases=paraphrases, anchors=anchors, max_tokens=max_tokens)
    settings = get_settings()
    migrate()
    phases = 6 + (1 if opts.paraphrases else 0)
    with Progress(SpinnerColumn(), TextColumn("{task.description:<32}"), BarColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("starting", total=phases)

        def step(msg: str) -> None:
            bar.update(task, description=msg, advance=0 if bar.tasks[0].description == "starting" else 1)

        try:
            with session_scope() as session:
                snap, created = service.build(session, settings, opts, progress=step)
        except service.DatasetError as exc:
            bar.stop()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        bar.update(task, description="done", completed=phases)
    typer.echo(f"{'built' if created else 'unchanged, existing'} snapshot {snap.id} {snap.hash[:12]} at {snap.path}")
    for kind, splits in snap.counts.items():
        typer.echo(f"  {kind}: " + ", ".join(f"{s} {n}" for s, n in splits.items()))


@app.command("show")
def show(snapshot_id: int) -> None:
    """Print a snapshot's manifest as JSON."""
    from retrain.datasets import service

    migrate()
    with session_scope() as session:
        snap = service.get_snapshot(session, snapshot_id)
        if snap is None:
            typer.echo(f"no dataset snapshot {snapshot_id}", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps({"id": snap.id, "path": snap.path, **snap.manifest}, indent=2, default=str))


@app.command("list")
def list_() -> None:
    """One line per snapshot, newest first."""
    from retrain.datasets import service

    migrate()
    with session_scope() as session:
        for snap in service.list_snapshots(session):
            counts = " ".join(f"{k}=" + "/".join(str(v.get(s, 0)) for s in SPLITS) for k, v in snap.counts.items())
            typer.echo(f"{snap.id}\t{snap.hash[:12]}\t{snap.created_at:%Y-%m-%d %H:%M}\t{counts}")


def export_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (default hitl-export.<format>).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    since: Annotated[datetime | None, typer.Option(help="Replies written at or after (ISO 8601, UTC if naive).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Replies written before (ISO 8601, UTC if naive).")] = None,
    model_version: Annotated[list[str] | None, typer.Option(help="Replies of this version (repeat).")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        help="Replies with feedback of this kind: ratings, thumbs, corrections, comparisons, flags, comments, "
             "or imported (repeat).")] = None,
    reviewer: Annotated[list[int] | None, typer.Option(help="Replies with feedback by this user id (repeat).")] = None,
) -> None:
    """Export the feedback store as training data (`GET /api/export` from the command line).

    One reviewed or imported reply per row: the conversation before it (`prompt`), the reply (`completion`), the
    model version, every rating, thumbs, correction, comparison, flag and comment with its reviewer id and
    reliability, and the consensus label. Deleted conversations and end users never appear. Load it with
    `datasets.load_dataset("json" | "parquet", data_files=FILE)`; the schema is in the README."""
    from retrain.datasets import export

    if fmt not in export.FORMATS:
        raise typer.BadParameter(f"one of {', '.join(export.FORMATS)}", param_hint="--format")
    unknown = sorted(set(kind or ()) - set(export.KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; one of {', '.join(export.KINDS)}", param_hint="--kind")
    migrate()
    where = export.ExportFilter(since=since, until=until, model_versions=model_version or None, kinds=kind or None,
                                reviewers=reviewer or None)
    with session_scope() as session:
        rows = export.export_rows(session, get_settings(), where)
    output = output or Path(f"hitl-export.{fmt}")
    if fmt == "parquet":
        output.write_bytes(export.parquet(rows))
    else:
        with open(output, "wb") as f:
            f.writelines(export.jsonl(rows))
    typer.echo(f"exported {len(rows)} replies to {output}")
