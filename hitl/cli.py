"""The `hitl` command. Each domain contributes its own sub-commands."""

import typer

from core import logs
from core.db import migrate, session_scope
from core.limits import server_options
from core.models import Role
from core.settings import get_settings
from evaluators import cli as evaluators_cli
from feedback import cli as feedback_cli
from hitl import pipeline
from retrain.datasets import cli as datasets_cli
from retrain.training import cli as retrain_cli
from service import cli as service_cli

app = typer.Typer(help="hitl: human-in-the-loop feedback and continuous improvement for chatbots.",
                  no_args_is_help=True)
app.add_typer(service_cli.app, name="model")
app.add_typer(evaluators_cli.app, name="models")
app.command("eval")(evaluators_cli.eval_command)
app.command("export")(datasets_cli.export_command)
app.command("import")(feedback_cli.import_command)
app.add_typer(feedback_cli.app, name="review")
app.add_typer(datasets_cli.app, name="dataset")
app.add_typer(retrain_cli.app, name="retrain")
retrain_cli.app.command("execute", hidden=True)(pipeline.execute_command)
retrain_cli.app.command("train-stages", hidden=True)(pipeline.train_stages_command)

users = typer.Typer(help="Manage API users and keys.", no_args_is_help=True)
app.add_typer(users, name="users")


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default HITL_HOST)."),
    port: int = typer.Option(None, help="Port (default HITL_PORT)."),
) -> None:
    """Run the API, the review UI and the embedded scheduler (prepares the base model on first run).

    The model runs in process (HITL_BACKEND=local), on a vLLM fleet whose LoRA adapters hitl loads and unloads
    (HITL_BACKEND=vllm, HITL_VLLM_URLS), or on any OpenAI-compatible server (HITL_BACKEND=openai)."""
    import uvicorn

    from hitl.app import create_app

    settings = get_settings()
    logs.configure(settings.log_format)
    if settings.backend != "openai":  # local and vllm serve the registry's base checkpoint
        from service.model_init import ensure_base_model

        ensure_base_model(settings)
    uvicorn.run(create_app(), host=host or settings.host, port=port or settings.port, log_level="info",
                **server_options(settings))


@app.command()
def scheduler() -> None:
    """Run the scheduled jobs (nightly retrain, canary decisions, webhook deliveries) as a dedicated process.
    For production; set HITL_SCHEDULER_ENABLED=false on the API servers (or keep both: the retrain lock admits one run)."""
    import signal
    import sys
    import time

    from evaluators import tasks as evaluators_tasks
    from retrain.training import tasks as retrain_tasks

    logs.configure(get_settings().log_format)
    migrate()
    sched = retrain_tasks.build_scheduler()
    retrain_tasks.start_scheduler(sched)
    evaluators_tasks.schedule(sched)
    from hitl.app import start_webhooks

    dispatcher = start_webhooks()
    typer.echo(f"scheduler: retrain cron '{sched.hitl_cron}', next run {sched.get_job(retrain_tasks.JOB_ID).next_run_time}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        dispatcher.stop()
        retrain_tasks.stop_scheduler(sched)


@users.command("create")
def users_create(
    role: Role = typer.Option(..., help="admin, reviewer or service."),
    name: str = typer.Option(..., help="Display name."),
) -> None:
    """Create a user; prints its API key on the last line (shown once)."""
    from core.auth import create_user
    from feedback.service import audit_user

    migrate()
    with session_scope() as session:
        user, key = create_user(session, name=name, role=role)
        audit_user(session, None, "user.create", user)
        typer.echo(f"created {user.role} '{user.name}' (id {user.id})")
    typer.echo(key)


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Smoke test for CI: 12 questions, 1 paraphrase each; on so "
                               "little data the gates may decide insufficient_evidence."),
    base_model: str = typer.Option(None, help="Base checkpoint (default the converted SmolLM2-135M-Instruct)."),
    data_dir: str = typer.Option(None, help="Fresh data dir for the demo (default HITL_DATA_DIR/demo/<time>)."),
    seed: int = typer.Option(7, help="Scenario seed (questions, noise)."),
    items: int = typer.Option(None, help="Number of corpus questions end users ask and reviewers correct "
                              "(default 32, quick 12)."),
) -> None:
    """Play the whole loop on a fresh store through the HTTP API and report the measured improvement.

    Training, dataset snapshot and gates run on the product's defaults (the demo starts the retrain with an
    empty config); the options only size the scenario."""
    from pathlib import Path

    from demo.run import main

    main(quick=quick, base_model=base_model, data_dir=Path(data_dir) if data_dir else None, seed=seed, items=items)


if __name__ == "__main__":
    app()
