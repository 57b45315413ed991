"""One bad request never fails its neighbours: a malformed chat request fails alone with a 4xx before
it joins a batch, a row that fails inside the batch is evicted alone, and the good requests sent at the
same time all succeed (random mixes from a fixed seed)."""

import asyncio
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor

from service.backends import BadRequest, Generation, SamplingParams
from service.backends.local import LocalBackend

PROMPTS = ["What is the capital of France?", "Hi", "Tell me a joke.", "1 2 3", "Thanks!"]
LONE_SURROGATES = ["\ud800", "\udfff", "a\udc80b"]


def good_body(rng: random.Random) -> dict:
    return {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": rng.randint(2, 12),
            "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randrange(2**63), "stream": rng.random() < 0.5}


def bad_body(rng: random.Random) -> tuple[dict, str]:
    """A good body with one fault, and a word the 4xx detail must contain."""
    body, lone = good_body(rng), rng.choice(LONE_SURROGATES)
    fault = rng.randrange(8)
    if fault == 0:
        body["seed"] = 2**64 + rng.randrange(2**70)
    elif fault == 1:
        body["seed"] = -(2**63) - 1 - rng.randrange(2**70)
    elif fault == 2:
        body["messages"][0]["content"] += lone
    elif fault == 3:
        body["messages"][0]["content"] = [{"type": "text", "text": lone}]
    elif fault == 4:
        body["stop"] = [lone]
    elif fault == 5:
        body["user"] = lone
    elif fault == 6:
        body["temperature"] = float("nan")
        return body, "temperature"
    else:  # passes validation; the decoder refuses it when it tokenises the prompt
        body["messages"][0]["content"] = "hello " * 3000
        return body, "context window"
    return body, "seed" if fault < 2 else "UTF-8"


def post(http, body: dict):
    """JSON with \\ud800-style escapes, as a client may send (httpx's own encoder refuses lone surrogates)."""
    return http.post("/v1/chat/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})


def answered(response, stream: bool) -> bool:
    if response.status_code != 200:
        return False
    if not stream:
        return response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return response.text.rstrip().endswith("data: [DONE]") and '"error"' not in response.text


def test_malformed_requests_fail_alone_over_http(live_server, service_key):
    rng = random.Random(16)
    requests = [(good_body(rng), None) for _ in range(24)] + [bad_body(rng) for _ in range(24)]
    rng.shuffle(requests)

    def send(request):
        with live_server.client(service_key) as http:
            return post(http, request[0])

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, requests))

    good = [(body, r) for (body, word), r in zip(requests, responses) if word is None]
    bad = [(word, r) for (_body, word), r in zip(requests, responses) if word is not None]
    assert [r.status_code for body, r in good if not answered(r, body["stream"])] == []
    assert [(word, r.status_code, r.text[:200]) for word, r in bad
            if r.status_code != 422 or word not in json.dumps(r.json()["detail"], ensure_ascii=False)] == []
    assert not [r.text for _word, r in bad if "NaN" in r.text or "\\ud" in r.text]  # the input is not echoed


def test_a_failing_row_is_evicted_alone(tiny_model_dir):
    """Requests that reach the decoder despite the API's validation: bad text and seeds fail at admission,
    a row whose sampling breaks (temperature NaN) is evicted from the running batch; the rest finish."""
    rng = random.Random(9)
    faults = [([{"role": "user", "content": "Hi \ud800"}], SamplingParams(temperature=0, max_tokens=8)),
              ([{"role": "user", "content": "Hi"}], SamplingParams(temperature=1.0, max_tokens=8, seed=2**64)),
              ([{"role": "user", "content": "Hi"}], SamplingParams(temperature=float("nan"), max_tokens=8))]
    jobs = [([{"role": "user", "content": rng.choice(PROMPTS)}],
             SamplingParams(temperature=1.0, max_tokens=rng.randint(4, 24), seed=i), None) for i in range(12)]
    jobs += [(*rng.choice(faults), "bad") for _ in range(8)]
    rng.shuffle(jobs)

    async def main():
        backend = LocalBackend(tiny_model_dir, "v1", torch_threads=1)
        await backend.start()

        async def one(i, messages, params):
            await asyncio.sleep(0.005 * i)  # arrive while others decode: admitted into the running batch
            return await backend.complete(messages, params)

        try:
            return await asyncio.gather(*(one(i, m, p) for i, (m, p, _) in enumerate(jobs)), return_exceptions=True)
        finally:
            await backend.close()

    results = asyncio.run(main())
    assert all(isinstance(r, Generation) for (_m, _p, bad), r in zip(jobs, results) if not bad)
    refused = [r for (_m, p, bad), r in zip(jobs, results) if bad and not math.isnan(p.temperature)]
    assert refused and all(isinstance(r, BadRequest) for r in refused)
    assert all(isinstance(r, Exception) for (_m, _p, bad), r in zip(jobs, results) if bad)
