"""`hitl dataset build|show|list`, and the datasets Alembic branch matches the model."""

import json

from typer.testing import CliRunner

from core.db import session_scope
from tests.retrain.datasets import factories as f


def test_cli_build_show_list(settings):
    from hitl.cli import app

    with session_scope() as s:
        r = f.reviewer(s)
        for i in range(2):
            _c, m = f.conversation(s, f"Question {i}", f"Wrong answer {i}")
            f.correct(s, m[1], r, f"Right answer {i}")
    runner = CliRunner()
    built = runner.invoke(app, ["dataset", "build", "--validation-fraction", "0", "--test-fraction", "0"])
    assert built.exit_code == 0, built.output
    assert "built snapshot 1" in built.output and "sft: train 2, validation 0, test 0" in built.output
    again = runner.invoke(app, ["dataset", "build", "--validation-fraction", "0", "--test-fraction", "0"])
    assert "unchanged, existing snapshot 1" in again.output
    shown = runner.invoke(app, ["dataset", "show", "1"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["counts"]["dpo"] == {"train": 2, "validation": 0, "test": 0}
    listed = runner.invoke(app, ["dataset", "list"])
    assert listed.output.startswith("1\t") and "sft=2/0/0" in listed.output
    assert runner.invoke(app, ["dataset", "show", "7"]).exit_code == 1
    only_kto = runner.invoke(app, ["dataset", "build", "--kind", "kto", "--validation-fraction", "0",
                                   "--test-fraction", "0"])
    assert "built snapshot 2" in only_kto.output and "kto: train 4" in only_kto.output and "sft: train 0" in only_kto.output
    bad = runner.invoke(app, ["dataset", "build", "--options", '{"test_fraction": 3}'])
    assert bad.exit_code != 0


def test_migration_matches_model(settings):
    """No pending autogenerate operations for the datasets tables (`alembic check`, scoped to them)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import retrain.datasets.models  # noqa: F401
    from core.db import engine_for

    with engine_for(settings.db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, SQLModel.metadata)

    mine = [d for d in diffs if "datasetsnapshot" in repr(d) or "splitassignment" in repr(d)]
    assert mine == []
