"""Model access for the evaluators: load a registry version, score completions, decode greedily."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.backends.local import load_model


@dataclass
class Scorer:
    """A loaded model version. `score` gives the summed log-probability of an assistant reply."""

    version: str
    model: Any
    tokenizer: Any
    batch_size: int = 8
    max_length: int = 1024

    @classmethod
    def load(cls, version: str, base_path: str, adapter_path: str | None = None, device: str | None = None,
             **kw) -> "Scorer":
        model, tokenizer = load_model(base_path, adapter_path, device)
        return cls(version, model, tokenizer, **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, prompt: list[dict], reply: str) -> tuple[list[int], int]:
        tok = self.tokenizer
        head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": reply}], tokenize=False)
        tail = full[len(head):].rstrip("\n") if full.startswith(head) else reply + (tok.eos_token or "")
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        tail_ids = tok(tail, add_special_tokens=False)["input_ids"][: self.max_length // 2]
        head_ids = head_ids[-(self.max_length - len(tail_ids)):]
        return head_ids + tail_ids, len(tail_ids)

    @torch.inference_mode()
    def score(self, items: list[tuple[list[dict], str]]) -> list[tuple[float, int]]:
        """(sum of reply-token log-probs, reply token count) for each (prompt messages, reply)."""
        out: list[tuple[float, int]] = []
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(items), self.batch_size):
            encoded = [self._encode(p, r) for p, r in items[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (row, _) in enumerate(encoded):  # right padding: positions start at 0 for every row
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for i, (row, n_reply) in enumerate(encoded):
                end = len(row) - 1  # logprobs[t] scores token t+1
                out.append((float(logprobs[i, end - n_reply:end].sum()), n_reply))
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
        """Greedy replies (left-padded batches)."""
        tok, replies = self.tokenizer, []
        for start in range(0, len(prompts), self.batch_size):
            texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start:start + self.batch_size]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            replies += [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                             skip_special_tokens=True)]
        return replies


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def split_sft(row: dict) -> tuple[list[dict], str]:
    """An SFT row's context and its final assistant target."""
    messages = row["messages"]
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]
