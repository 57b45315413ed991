"""`hitl review stats` reads the same figures as the API."""

import json

from typer.testing import CliRunner


def test_review_stats_cli(settings):
    from core.auth import create_user
    from core.db import session_scope
    from core.models import Role
    from feedback import service
    from feedback.models import ThumbsValue
    from hitl.cli import app
    from service.models import Conversation, Message

    with session_scope() as s:
        user, _ = create_user(s, name="svc", role=Role.service)
        s.add(Conversation(id="conv_cli"))
        s.flush()
        s.add(Message(id="msg_cli", conversation_id="conv_cli", position=0, role="assistant", content="hi"))
        s.flush()
        service.record_thumbs(s, user, message_id="msg_cli", thumbs=ThumbsValue.down, comment=None, settings=settings)
    result = CliRunner().invoke(app, ["review", "stats", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    assert figures["feedback"]["thumbs_down"] == 1
    assert figures["queue"]["open_by_reason"] == {"thumbs_down": 1}
    assert set(figures["alpha"]) == {"correctness", "helpfulness", "tone"}
