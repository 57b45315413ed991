"""Candidate generation cannot starve other users: no database connection is held while the model generates,
and one reviewer runs at most `HITL_CANDIDATE_CONCURRENCY` generations at once (then 429 with Retry-After)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from core.db import get_engine
from tests.conftest import make_key
from tests.feedback.conftest import chat


def burst(server, key: str, message_id: str, n: int) -> list:
    def one(_):
        with server.client(key) as http:
            return http.post(f"/api/review/items/{message_id}/candidates")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_no_connection_is_held_while_candidates_generate(server_with, admin_key, service_key):
    server = server_with(MAX_TOKENS="300", CANDIDATE_CONCURRENCY="40")
    with server.client(service_key) as service:
        message_id = chat(service, "Tell me a story.")["message_id"]
    pool, samples, done = get_engine().pool, [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(pool.checkedout())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        responses = burst(server, admin_key, message_id, 40)
    finally:
        done.set()
        sampler.join()
    assert [r.status_code for r in responses] == [201] * 40
    # while 80 candidates decode, connections are out only for the short reads and writes around them
    assert samples.count(0) > len(samples) / 2, f"checked-out connections over time: {samples[::10]}"


def test_one_reviewer_runs_a_bounded_number_of_generations(server_with, admin_key, service_key):
    server = server_with(MAX_TOKENS="300")  # default HITL_CANDIDATE_CONCURRENCY: 2
    with server.client(service_key) as service:
        message_id = chat(service, "Tell me a story.")["message_id"]
    other = make_key("admin", "other-reviewer")
    with ThreadPoolExecutor(2) as pool:
        mine = pool.submit(burst, server, admin_key, message_id, 12)
        theirs = pool.submit(burst, server, other, message_id, 2)
        mine, theirs = mine.result(), theirs.result()
    codes = sorted(r.status_code for r in mine)
    assert set(codes) == {201, 429} and codes.count(201) >= 2, codes
    assert all(int(r.headers["Retry-After"]) > 0 and "at most 2" in r.json()["detail"]
               for r in mine if r.status_code == 429)
    assert [r.status_code for r in theirs] == [201, 201]  # another reviewer is not limited by the first
