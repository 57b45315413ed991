"""In-process backend: one worker thread decodes concurrent requests together in a batch.

Requests queue up; the worker takes up to `max_batch_size` of them, prefills them as one
left-padded batch and decodes step by step with a shared KV cache, dropping rows as they
finish. Text flows back to each request's asyncio queue, so the event loop never blocks.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from service.backends.base import Backend, Event, Generation, SamplingParams, Started

log = logging.getLogger(__name__)


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(base_path: str | Path, adapter_path: str | Path | None = None, device: str | None = None):
    """Load a base checkpoint, merge an optional LoRA adapter, return (model, tokenizer) ready to decode."""
    dev = pick_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(dev).eval(), tokenizer


@dataclass
class _Request:
    messages: list[dict]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(frozen=True)
class _Loaded:
    model: torch.nn.Module
    tokenizer: object
    version: str
    eos_ids: frozenset[int]


class LocalBackend(Backend):
    def __init__(self, base_path: str | Path, version: str, adapter_path: str | Path | None = None,
                 device: str | None = None, max_batch_size: int = 8, batch_wait_ms: float = 5.0):
        self._spec = (base_path, adapter_path, version)
        self._device = device
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self._current: _Loaded | None = None
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    @property
    def version(self) -> str:
        return self._current.version if self._current else self._spec[2]

    @property
    def ready(self) -> bool:
        return self._current is not None

    async def start(self) -> None:
        base, adapter, version = self._spec
        await self.swap(base, version, adapter)
        self._worker = threading.Thread(target=self._run, name="hitl-decoder", daemon=True)
        self._worker.start()

    async def close(self) -> None:
        if self._worker:
            self._queue.put(None)
            await asyncio.to_thread(self._worker.join, 30)

    async def swap(self, base_path: str | Path, version: str, adapter_path: str | Path | None = None) -> None:
        """Load a model in the background, then switch to it atomically; running batches finish on the old one."""
        model, tokenizer = await asyncio.to_thread(load_model, base_path, adapter_path, self._device)
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        eos_ids.add(tokenizer.eos_token_id)
        self._current = _Loaded(model, tokenizer, version, frozenset(i for i in eos_ids if i is not None))
        log.info("serving model version %s", version)

    async def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]:
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
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self._decode(batch)
            except Exception as exc:  # a failed batch fails its requests, not the server
                log.exception("decode failed")
                for request in batch:
                    request.emit(exc)

    @torch.inference_mode()
    def _decode(self, batch: list[_Request]) -> None:
        loaded = self._current
        tok, model = loaded.tokenizer, loaded.model
        device = next(model.parameters()).device
        prompts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(r, int(m.sum()), tok, loaded.version) for r, m in zip(batch, mask)]
        for row in rows:
            row.request.emit(Started(loaded.version, row.prompt_tokens))

        cache = DynamicCache()
        logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True).logits[:, -1, :]
        live = list(range(len(rows)))  # cache row i belongs to rows[live[i]]
        while live:
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            next_ids, keep = [], []
            for i, idx in enumerate(live):
                row = rows[idx]
                token = row.sample(logprobs[i])
                if row.step(token, loaded.eos_ids):
                    keep.append(i)
                    next_ids.append(token)
            if not keep:
                break
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                live = [live[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1
            ids = torch.tensor(next_ids, device=device).unsqueeze(1)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).logits[:, -1, :]


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
