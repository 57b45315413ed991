"""`hitl review …`: review queue and feedback figures from the command line; `hitl import FILE`: existing logs."""

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Review queue and feedback.", no_args_is_help=True)


@app.command("stats")
def stats(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    agreement: bool = typer.Option(True, help="Include Krippendorff's alpha per rubric dimension."),
) -> None:
    """Feedback counts, queue state and agreement per rubric dimension."""
    from rich.console import Console
    from rich.table import Table

    from core.db import migrate, session_scope
    from core.settings import get_settings
    from feedback import quality, service

    migrate()
    with session_scope() as session:
        figures = service.stats(session)
        if agreement:
            report = quality.agreement_report(session, get_settings())
            figures["alpha"] = {d: v["alpha"] for d, v in report["dimensions"].items()}
            figures["adjudication_queue"] = len(report["adjudication"])
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    table = Table("figure", "value", title="hitl review stats")
    for group, values in figures.items():
        if isinstance(values, dict):
            for name, value in values.items():
                table.add_row(f"{group}.{name}", _fmt(value))
        else:
            table.add_row(group, _fmt(values))
    Console().print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def import_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="JSON lines: OpenAI chat records or Langfuse traces ('-' not accepted).")],
    fmt: Annotated[str, typer.Option("--format", help="auto (detected per line), openai or langfuse.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import existing chat logs into the feedback store (`POST /api/import` from the command line).

    OpenAI chat format: {"messages": [...], "model", "user", "created", "metadata", "thumbs": "up"|"down",
    "comment", "scores": {dimension: 1..5}}. Langfuse: one trace with its observations and scores per line.
    Imported replies are reviewable and enter the review queue by the usual priorities; the same record imports
    once; bad lines are reported by number and skipped. Exit code 1 when no line could be imported."""
    from core.db import migrate
    from core.settings import get_settings
    from feedback import imports

    if fmt not in imports.FORMATS:
        raise typer.BadParameter(f"one of {', '.join(imports.FORMATS)}", param_hint="--format")
    migrate()
    with open(file, "rb") as f:
        report = imports.run(f, None, get_settings(), fmt)
    figures = dataclasses.asdict(report)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
    else:
        typer.echo(f"{report.lines} records: imported {report.conversations} conversations ({report.replies} replies, "
                   f"{report.thumbs} thumbs, {report.ratings} ratings, {report.queued} queued), "
                   f"{report.duplicates} already imported, {report.skipped_deleted} of deleted end users, "
                   f"{report.error_count} bad lines")
        for error in report.errors[:20]:
            typer.echo(f"  line {error['line']}: {error['error']}", err=True)
        if report.error_count > 20:
            typer.echo(f"  ... and {report.error_count - 20} more (--json lists up to 1000)", err=True)
    if report.lines and report.error_count == report.lines:
        raise typer.Exit(1)
