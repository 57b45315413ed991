"""A database outage answers 503 with `Retry-After`, not 500, and the service recovers when the database
comes back. The outage is a TCP relay to the test PostgreSQL that drops every connection and refuses
new ones (the shared server itself keeps running)."""

import json
import socket
import threading
import time

import pytest

from tests.conftest import POSTGRES, LiveServer, make_key

HI = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


class Relay:
    """Forwards 127.0.0.1:`port` to PostgreSQL; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.up, self.sockets = target, True, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def cut(self) -> None:
        self.up = False
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets = []


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0 and "database" in response.json()["detail"]


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL")
@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_database_outage_is_503_with_retry_after(settings, monkeypatch):
    from core.settings import get_settings
    from hitl.app import create_app

    relay = Relay(("127.0.0.1", 5432))
    url = settings.db_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{relay.port}/")
    monkeypatch.setenv("HITL_DATABASE_URL", url)
    get_settings.cache_clear()
    service_key, admin_key = make_key("service"), make_key("admin")
    with LiveServer(create_app()) as server, server.client(service_key) as http, server.client(admin_key) as api:
        reply = http.post("/v1/chat/completions", json=HI)
        assert reply.status_code == 200
        message_id = reply.json()["hitl"]["message_id"]
        assert http.post("/v1/feedback", json={"message_id": message_id, "thumbs": "up"}).status_code == 201

        with http.stream("POST", "/v1/chat/completions",
                         json={**HI, "max_tokens": 900, "temperature": 0, "stream": True}) as streaming:
            lines = streaming.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            relay.cut()  # mid-traffic: the reply cannot be stored when it ends
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == 503

        started = time.monotonic()
        assert_unavailable(http.post("/v1/chat/completions", json=HI))
        assert_unavailable(http.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"}))
        assert_unavailable(api.get("/api/review/stats"))
        assert time.monotonic() - started < 5  # fails fast, nothing waits for the database
        assert http.get("/readyz").status_code == 503

        relay.up = True
        deadline = time.monotonic() + 30
        while http.post("/v1/chat/completions", json=HI).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after the database came back"
            time.sleep(0.2)
        assert http.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"}).status_code == 201
        assert api.get("/api/review/stats").json()["feedback"]["thumbs_down"] == 1
