"""In-process backend: one worker thread decodes concurrent requests together (continuous batching).

Requests queue up; the worker keeps one running batch with a shared KV cache. Between decode
steps it admits waiting requests: it prefills them as a left-padded batch and merges their cache
into the running one (left-padding the shorter side), so a request never waits for a whole batch
to finish. Finished rows leave the batch at once. Text flows back to each request's asyncio
queue, so the event loop never blocks. A hot swap loads the new model beside the old one; the
running batch finishes on the model it started with and new requests are admitted on the new one.
"""

import asyncio
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from core import precision
from service.backends.base import (
    Backend, BadRequest, Busy, Event, Generation, SamplingParams, Started, Unavailable, generation_defaults,
)
from service.metrics import observe_forward

log = logging.getLogger(__name__)


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_LOADING = threading.Lock()  # transformers' loading is not thread-safe: two at once leave meta tensors


def load_model(base_path: str | Path, adapter_path: str | Path | None = None, device: str | None = None):
    """Load a base checkpoint, merge an optional LoRA adapter, return (model, tokenizer) ready to decode."""
    with _LOADING:
        return _load(base_path, adapter_path, device)


def _load(base_path: str | Path, adapter_path: str | Path | None, device: str | None):
    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=precision.of(dev).dtype)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(dev).eval(), tokenizer


def logits_at(model, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits at the (row, position) pairs only: the output head runs on those positions alone (on a 49k
    vocabulary it costs more than the rest of a 135M model over the whole sequence). `ids` are right-padded;
    the leading tokens all rows share (the chat template's system prompt, about half of a short question's
    tokens) run once and reach the other rows as a KV cache."""
    decoder, head = getattr(model, "get_decoder", lambda: None)(), model.get_output_embeddings()
    if decoder is None or head is None:
        return model(input_ids=ids, attention_mask=mask).logits[rows, cols]
    shared = ((ids == ids[:1]) & (mask == 1)).all(0).long().cumprod(0).sum()
    p = min(int(shared), int(cols.min()))  # the positions asked for lie after the shared part
    if len(ids) < 2 or p < 2 or "cache" not in inspect.signature(decoder.forward).parameters:
        return head(decoder(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols])
    cache = decoder(input_ids=ids[:1, :p], attention_mask=mask[:1, :p], use_cache=True).cache
    cache.batch_repeat_interleave(len(ids))
    positions = torch.arange(p, ids.shape[1], device=ids.device)[None].expand(len(ids), -1)
    hidden = decoder(input_ids=ids[:, p:], attention_mask=mask, position_ids=positions, cache=cache,
                     use_cache=True).last_hidden_state
    return head(hidden[rows, cols - p])


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def greedy_replies(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16,
                   guesses: list[str] | None = None) -> list[str]:
    """Greedy replies to chat prompts, as `model.generate(do_sample=False)` gives them; a repeated prompt is
    decoded once. `guesses` (say another version's greedy replies to the same prompts) are checked first in
    one teacher-forced pass: the prefix of a guess on which the model's own argmax agrees token by token *is*
    its greedy output, so only the rest is decoded. After a small LoRA update most replies need no decoding."""
    eos, device = tokenizer.eos_token_id, next(model.parameters()).device
    keys = [repr(p) for p in prompts]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # each distinct prompt once
    heads = {i: chat_prompt_ids(tokenizer, prompts[i]) for i in first.values()}
    verified: dict[int, list[int]] = {i: [] for i in heads}  # reply tokens known to be greedy
    finished: set[int] = set()
    if guesses is not None:
        for i in heads:
            tail = tokenizer(guesses[i], add_special_tokens=False)["input_ids"][:max_new_tokens]
            verified[i] = tail + ([eos] if len(tail) < max_new_tokens else [])
        _verify(model, heads, verified, finished, batch_size, eos, max_new_tokens, device)
    todo = sorted((i for i in heads if i not in finished), key=lambda i: len(heads[i]) + len(verified[i]))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            rows = [heads[i] + verified[i] for i in batch]
            width = max(map(len, rows))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            budget = max(max_new_tokens - len(verified[i]) for i in batch)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            for i, new in zip(batch, out[:, width:].tolist()):
                verified[i] += new[: max_new_tokens - len(verified[i])]
    finally:
        tokenizer.padding_side = side
    texts = {i: tokenizer.decode(t[: t.index(eos)] if eos in t else t, skip_special_tokens=True).strip()
             for i, t in verified.items()}
    return [texts[first[k]] for k in keys]


def _verify(model, heads: dict[int, list[int]], guess: dict[int, list[int]], finished: set[int], batch_size: int,
            eos: int, max_new_tokens: int, device: torch.device) -> None:
    """Cut each guess (in place) to the prefix the model's argmax confirms plus the model's own next token;
    mark as finished the rows whose greedy reply is then complete (it ended or reached `max_new_tokens`)."""
    order = sorted(heads, key=lambda i: len(heads[i]) + len(guess[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        rows = [heads[i] + guess[i] for i in batch]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)  # right padding
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        spans = [(len(heads[i]) - 1, len(heads[i]) - 1 + len(guess[i])) for i in batch]  # state t predicts t+1
        rows_t = torch.tensor([r for r, (a, b) in enumerate(spans) for _ in range(a, b)], dtype=torch.long)
        cols_t = torch.tensor([c for a, b in spans for c in range(a, b)], dtype=torch.long)
        picked, at = logits_at(model, ids, mask, rows_t, cols_t).argmax(-1).tolist(), 0
        for (a, b), i in zip(spans, batch):
            g, own, at = guess[i], picked[at: at + b - a], at + b - a  # the model's choice at each guessed position
            agree = next((k for k, (mine, guessed) in enumerate(zip(own, g)) if mine != guessed), len(g))
            guess[i] = g[:agree] + ([own[agree]] if agree < len(g) else [])
            if guess[i][-1:] == [eos] or len(guess[i]) >= max_new_tokens:
                finished.add(i)


@dataclass
class _Request:
    messages: list[dict]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the requester's event loop is gone; nobody is listening
            self.cancelled.set()


@dataclass(frozen=True)
class _Loaded:
    model: torch.nn.Module
    tokenizer: object
    version: str
    eos_ids: frozenset[int]
    max_positions: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class LocalBackend(Backend):
    def __init__(self, base_path: str | Path, version: str, adapter_path: str | Path | None = None,
                 device: str | None = None, max_batch_size: int = 8, batch_wait_ms: float = 5.0,
                 torch_threads: int = 0, max_queued: int = 256):
        self._spec = (base_path, adapter_path, version)
        self._device = device
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.torch_threads = torch_threads
        self.max_queued = max_queued
        self._current: _Loaded | None = None
        self._swap_lock = asyncio.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    @property
    def version(self) -> str:
        return self._current.version if self._current else self._spec[2]

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def sampling_defaults(self) -> dict[str, float]:
        """The served checkpoint's `generation_config` (greedy unless it samples)."""
        return generation_defaults(self._current.model.generation_config if self._current else None)

    async def start(self) -> None:
        base, adapter, version = self._spec
        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)
        await self.swap(base, version, adapter)
        self._worker = threading.Thread(target=self._run, name=f"hitl-decoder-{version}", daemon=True)
        self._worker.start()

    async def close(self) -> None:
        if self._worker:
            self._queue.put(None)
            await asyncio.to_thread(self._worker.join, 30)
            self._worker = None

    async def swap(self, base_path: str | Path, version: str, adapter_path: str | Path | None = None) -> None:
        """Load a model in the background, then switch to it atomically; running rows finish on the old one."""
        async with self._swap_lock:
            model, tokenizer = await asyncio.to_thread(load_model, base_path, adapter_path, self._device)
            eos = model.generation_config.eos_token_id
            eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
            eos_ids.add(tokenizer.eos_token_id)
            max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
            self._current = _Loaded(model, tokenizer, version, frozenset(i for i in eos_ids if i is not None),
                                    max_positions)
            self._spec = (base_path, adapter_path, version)
            log.info("serving model version %s", version)

    async def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]:
        if self._worker is None or not self._worker.is_alive():
            raise Unavailable(f"model {self.version} is not running")
        if self._queue.qsize() >= self.max_queued:
            raise Busy(f"{self.max_queued} requests are already waiting for the model; retry later")
        request = _Request(messages, params, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(request)
        try:
            while True:
                event = await request.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Generation):
                    return
        finally:
            request.cancelled.set()

    # -- worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        batch: _Batch | None = None
        stopping = False
        while True:
            admitted = self._take(batch, block=batch is None and not stopping)
            if admitted is None:  # shutdown requested
                stopping = True
                admitted = []
            if admitted:
                loaded = batch.loaded if batch else self._current
                try:
                    fresh = _Batch.prefill(loaded, admitted)
                except Exception as exc:  # a failed prefill fails only the requests it held
                    log.exception("prefill failed")
                    for request in admitted:
                        request.emit(exc)
                    fresh = None
                if fresh is not None:
                    batch = fresh if batch is None else batch.merge(fresh)
            if batch is not None:
                try:
                    batch.step()
                except Exception as exc:  # a failed step fails its rows, not the server
                    log.exception("decode step failed")
                    batch.fail(exc)
                if batch.empty:
                    batch = None
            if stopping and batch is None:
                self._refuse_waiting()
                return

    def _refuse_waiting(self) -> None:
        """Requests that raced with `close()` get an error instead of waiting forever."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.emit(Unavailable(f"model {self.version} was closed"))

    def _take(self, batch: "_Batch | None", block: bool) -> list[_Request] | None:
        """Requests to admit now: block for the first when idle, then gather for `batch_wait`."""
        if batch is not None and (batch.loaded is not self._current or not batch.can_merge):
            return []  # drain the batch on its own model before starting on the new one
        room = self.max_batch_size - (len(batch.rows) if batch else 0)
        taken: list[_Request] = []
        if block:
            first = self._queue.get()
            if first is None:
                return None
            taken.append(first)
        deadline = time.monotonic() + (self.batch_wait if block else 0)
        while len(taken) < room:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again once the running rows are done
                break
            taken.append(item)
        return [r for r in taken if not r.cancelled.is_set()]


class _Batch:
    """Running rows sharing one left-padded KV cache; each row feeds back the token it sampled last."""

    def __init__(self, loaded: _Loaded, rows: list["_Row"], cache: DynamicCache, mask: torch.Tensor,
                 positions: torch.Tensor, tokens: list[int]):
        self.loaded, self.rows, self.cache = loaded, rows, cache
        self.mask, self.positions, self.tokens = mask, positions, tokens  # mask covers the cache only

    @property
    def empty(self) -> bool:
        return not self.rows

    @property
    def can_merge(self) -> bool:
        return all(type(layer) in (DynamicLayer, _GrowingLayer) for layer in self.cache.layers)

    @classmethod
    @torch.inference_mode()
    def prefill(cls, loaded: _Loaded, requests: list[_Request]) -> "_Batch | None":
        """Prefill new requests as one left-padded batch. A request that cannot be tokenised, seeded or fit
        in the context window fails alone, before it joins the batch."""
        tok, model, device = loaded.tokenizer, loaded.model, loaded.device
        prompts, rows = [], []
        for request in requests:
            try:
                ids = _prompt_ids(loaded, request)
                rows.append(_Row(request, len(ids), tok, loaded.version))
            except Exception as exc:
                request.emit(exc if isinstance(exc, BadRequest) else BadRequest(f"the request cannot be served: {exc}"))
                continue
            prompts.append(ids)
        if not rows:
            return None
        width = max(len(ids) for ids in prompts)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        for row in rows:
            row.request.emit(Started(loaded.version, row.prompt_tokens))
        cache = _growing_cache(model.config)
        start = time.perf_counter()
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        observe_forward("prefill", len(rows), time.perf_counter() - start)
        batch = cls(loaded, rows, cache, mask, positions[:, -1] + 1, [])
        batch._sample(logits)
        return None if batch.empty else batch

    @torch.inference_mode()
    def step(self) -> None:
        device = self.loaded.device
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        ids = torch.tensor(self.tokens, device=device).unsqueeze(1)
        start = time.perf_counter()
        logits = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=self.positions.unsqueeze(1),
                                   cache=self.cache, use_cache=True).logits[:, -1, :]
        observe_forward("decode", len(self.rows), time.perf_counter() - start)
        self.mask, self.positions = mask, self.positions + 1
        self._sample(logits)

    def _sample(self, logits: torch.Tensor) -> None:
        """Sample one token per row, stream it, and drop the rows that finished; a row that fails is
        evicted alone (its request gets the error) and the others decode on."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        keep, tokens = [], []
        for i, row in enumerate(self.rows):
            try:
                token = row.sample(logprobs[i])
                running = row.step(token, self.loaded.eos_ids)
            except Exception as exc:
                log.exception("decoding a row failed")
                row.request.emit(exc)
                continue
            if running:
                keep.append(i)
                tokens.append(token)
        self.tokens = tokens
        if len(keep) < len(self.rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if not self.can_merge:
            self.cache.batch_select_indices(index)
            return
        start = int(self.mask.any(0).int().argmax())  # columns that are padding in every kept row
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
        self.mask = self.mask[:, start:]

    def merge(self, other: "_Batch") -> "_Batch":
        """Append `other`'s rows, left-padding the shorter cache so that both line up."""
        length = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t: torch.Tensor, seq_dim_from_end: int) -> torch.Tensor:
            missing = length - t.shape[-seq_dim_from_end]
            return F.pad(t, (0, 0) * (seq_dim_from_end - 1) + (missing, 0)) if missing else t

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        self.tokens += other.tokens
        return self

    def fail(self, exc: BaseException) -> None:
        for row in self.rows:
            row.request.emit(exc)
        self.rows = []


def _prompt_ids(loaded: _Loaded, request: _Request) -> list[int]:
    ids = chat_prompt_ids(loaded.tokenizer, request.messages)
    if len(ids) + request.params.max_tokens > loaded.max_positions:
        raise BadRequest(f"prompt ({len(ids)} tokens) plus max_tokens ({request.params.max_tokens}) exceeds the "
                         f"context window of {loaded.max_positions} tokens")
    return ids


class _GrowingLayer(DynamicLayer):
    """A KV layer that appends into spare capacity instead of re-allocating on every step."""

    headroom = 64

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf = self._vbuf = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        need = n + key_states.shape[-2]
        kbuf = self._kbuf
        if kbuf is None or self.keys.data_ptr() != kbuf.data_ptr() or self.keys.shape[0] != kbuf.shape[0] \
                or need > kbuf.shape[-2]:
            self._kbuf, self._vbuf = self._grow(self.keys, key_states, n, need), self._grow(self.values, value_states, n, need)
        self._kbuf[:, :, n:need] = key_states
        self._vbuf[:, :, n:need] = value_states
        self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]
        return self.keys, self.values

    def _grow(self, old: torch.Tensor, new: torch.Tensor, n: int, need: int) -> torch.Tensor:
        b, h, _, d = new.shape
        buf = new.new_empty(b, h, need + self.headroom, d)
        if n:
            buf[:, :, :n] = old
        return buf


def _growing_cache(config) -> DynamicCache:
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_GrowingLayer() for _ in cache.layers]
    return cache


class _Row:
    """Decoding state of one request: sampling, stop handling and incremental detokenization."""

    def __init__(self, request: _Request, prompt_tokens: int, tokenizer, version: str):
        self.request, self.prompt_tokens, self.tok, self.version = request, prompt_tokens, tokenizer, version
        p = request.params
        self.ids: list[int] = []
        self.logprob_sum = 0.0
        self.sent = 0  # characters of text already emitted
        self.holdback = max((len(s) for s in p.stop), default=1) - 1
        self.generator = None
        if p.seed is not None and p.temperature > 0:
            self.generator = torch.Generator(device="cpu").manual_seed(p.seed)

    def sample(self, logprobs: torch.Tensor) -> int:
        p = self.request.params
        if p.temperature <= 0:
            token = int(logprobs.argmax())
        else:
            probs = torch.softmax(logprobs / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                cut = sorted_probs.cumsum(-1) - sorted_probs > p.top_p
                sorted_probs[cut] = 0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            token = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        self.logprob_sum += float(logprobs[token])
        return token

    def step(self, token: int, eos_ids: frozenset[int]) -> bool:
        """Record a sampled token; return whether this row keeps decoding."""
        p = self.request.params
        if self.request.cancelled.is_set():
            return self._finish("cancelled")
        if token in eos_ids:
            return self._finish("stop", count=True)
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        for stop in p.stop:
            at = text.find(stop)
            if at != -1:
                return self._finish("stop", text=text[:at])
        if len(self.ids) >= p.max_tokens:
            return self._finish("length", text=text)
        safe = len(text) - self.holdback
        if text.endswith("\ufffd"):  # partial UTF-8 sequence: wait for the next token
            safe = min(safe, len(text) - 1)
        if safe > self.sent:
            self.request.emit(text[self.sent:safe])
            self.sent = safe
        return True

    def _finish(self, reason: str, text: str | None = None, count: bool = False) -> bool:
        if text is None:
            text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent:
            self.request.emit(text[self.sent:])
        n = len(self.ids) + (1 if count else 0)
        self.request.emit(Generation(
            text=text, model_version=self.version, prompt_tokens=self.prompt_tokens, completion_tokens=n,
            finish_reason=reason, mean_logprob=self.logprob_sum / n if n else None,
        ))
        return False
