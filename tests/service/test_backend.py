"""The in-process backend on the tiny model: batching is exact, swaps and cancellations fail nothing."""

import asyncio

import pytest

from service.backends import BadRequest, Generation, SamplingParams, Started
from service.backends.canary import in_canary
from service.backends.local import LocalBackend

PROMPTS = ["What is the capital of France?", "Hi", "Tell me more about your question, please.", "1 2 3",
           "The quick brown fox jumps over the lazy dog. " * 3, "Thanks!"]
GREEDY = SamplingParams(temperature=0, max_tokens=24)
SEEDED = SamplingParams(temperature=1.0, max_tokens=24, seed=3)  # the random tiny model is greedy-degenerate


def run(coro):
    return asyncio.run(coro)


def msgs(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


async def collect(backend, prompt: str, params: SamplingParams = GREEDY) -> tuple[list, Generation]:
    events = [e async for e in backend.stream(msgs(prompt), params)]
    return events, events[-1]


async def started_backend(path, version="v1", **kw) -> LocalBackend:
    backend = LocalBackend(path, version, torch_threads=1, **kw)  # 2 shared cores: no thread oversubscription
    await backend.start()
    return backend


def test_concurrent_greedy_equals_sequential(tiny_model_dir):
    """Rows batched together (joining a running batch at different steps) decode exactly as alone
    (seeded sampling: each row draws from its own generator, so batching must not change a token)."""

    async def main():
        backend = await started_backend(tiny_model_dir)
        try:
            alone = [(await backend.complete(msgs(p), SEEDED)).text for p in PROMPTS]

            async def late(i, p):
                await asyncio.sleep(0.01 * i)  # arrive while others decode: admitted into the running batch
                return (await backend.complete(msgs(p), SEEDED)).text

            together = await asyncio.gather(*(late(i, p) for i, p in enumerate(PROMPTS)))
            return alone, together
        finally:
            await backend.close()

    alone, together = run(main())
    assert together == alone
    assert len(set(alone)) > 1  # the prompts really differ


def test_stream_events_and_stop(tiny_model_dir):
    async def main():
        backend = await started_backend(tiny_model_dir)
        try:
            events, generation = await collect(backend, "Hi", SamplingParams(temperature=0, max_tokens=30))
            first_text = generation.text
            stop = first_text[3:6] if len(first_text) > 6 else None
            stopped = None
            if stop:
                _, stopped = await collect(backend, "Hi", SamplingParams(temperature=0, max_tokens=30, stop=(stop,)))
            return events, generation, stop, stopped
        finally:
            await backend.close()

    events, generation, stop, stopped = run(main())
    assert isinstance(events[0], Started) and events[0].model_version == "v1"
    assert "".join(e for e in events if isinstance(e, str)) == generation.text
    assert generation.completion_tokens <= 30 and generation.finish_reason in {"stop", "length"}
    if stop:
        assert stopped.finish_reason == "stop" and stop not in stopped.text
        assert generation.text.startswith(stopped.text)


def test_swap_never_fails_requests_in_flight(tiny_model_dir):
    """Requests streaming during a swap finish on the old version; later ones get the new one."""

    async def main():
        backend = await started_backend(tiny_model_dir, max_batch_size=4)
        try:
            params = SamplingParams(temperature=0, max_tokens=40)
            reference = (await backend.complete(msgs("Hi"), params)).text
            first_delta = [asyncio.Event() for _ in range(6)]

            async def client(i):
                text, version = [], None
                async for event in backend.stream(msgs("Hi"), params):
                    if isinstance(event, Started):
                        version = event.model_version
                    elif isinstance(event, str):
                        text.append(event)
                        first_delta[i].set()
                    else:
                        first_delta[i].set()
                        return version, event
                raise AssertionError("stream ended without a Generation")

            # 6 requests with room for 4 in the batch: 4 decode, 2 wait in the queue during the swap
            before = [asyncio.create_task(client(i)) for i in range(6)]
            await asyncio.wait_for(first_delta[0].wait(), 60)
            await backend.swap(tiny_model_dir, "v2")
            after = await asyncio.gather(*(backend.complete(msgs("Hi"), params) for _ in range(3)))
            return reference, await asyncio.gather(*before), after, backend.version
        finally:
            await backend.close()

    reference, before, after, version = run(main())
    assert version == "v2"
    for started_as, generation in before:
        assert generation.model_version == started_as and generation.text == reference
    assert {started_as for started_as, _ in before} <= {"v1", "v2"}
    assert before[0][0] == "v1"  # it was decoding when the swap came
    assert all(g.model_version == "v2" and g.text == reference for g in after)


def test_cancelled_stream_frees_its_row(tiny_model_dir):
    async def main():
        backend = await started_backend(tiny_model_dir)
        try:
            stream = backend.stream(msgs("Hi"), SamplingParams(temperature=0, max_tokens=900))
            async for event in stream:
                if isinstance(event, str):
                    break
            await stream.aclose()
            follow_up = await asyncio.wait_for(backend.complete(msgs("Hi"), GREEDY), 60)
            return follow_up
        finally:
            await backend.close()

    assert run(main()).finish_reason in {"stop", "length"}


def test_prompt_longer_than_context_is_refused(tiny_model_dir):
    async def main():
        backend = await started_backend(tiny_model_dir)
        try:
            with pytest.raises(BadRequest, match="context window"):
                await backend.complete(msgs("hello " * 2000), GREEDY)
            return await backend.complete(msgs("Hi"), GREEDY)  # the worker lives on
        finally:
            await backend.close()

    assert run(main()).model_version == "v1"


def test_canary_share_is_uniform_and_stable():
    ids = [f"conv_{i:06d}" for i in range(4000)]
    share = sum(in_canary(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert not any(in_canary(i, 0.0) for i in ids) and all(in_canary(i, 1.0) for i in ids)
    assert [in_canary(i, 0.25) for i in ids[:50]] == [in_canary(i, 0.25) for i in ids[:50]]


def test_greedy_replies_verified_from_guesses_equal_plain_greedy_decoding(tiny_model_dir):
    """Guesses only save decoding: right, partly right, wrong and empty guesses give the model's own replies."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.backends.local import greedy_replies

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model, other = (AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval() for _ in range(2))
    torch.manual_seed(0)
    with torch.no_grad():  # sharper logits than a random init (whose argmax is always the end token); `other`
        for p, q in zip(model.parameters(), other.parameters()):  # is another version: the same, nudged
            p.mul_(20)
            q.copy_(p + torch.randn_like(p) * 0.5)
    prompts = [[{"role": "user", "content": q}] for q in ("What is a wavelength", "Hi", "Name three rivers.", "Hi")]
    plain = greedy_replies(model, tok, prompts, max_new_tokens=8)
    assert plain[1] == plain[3] and len(set(plain)) > 1
    for guesses in (plain, greedy_replies(other, tok, prompts, 8), [r[: len(r) // 2] for r in plain],
                    ["", "zz", "", "no"]):
        assert greedy_replies(model, tok, prompts, max_new_tokens=8, guesses=guesses) == plain

