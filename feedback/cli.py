"""`hitl review …`: review queue and feedback figures from the command line."""

import json

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
