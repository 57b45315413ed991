"""Model access for the evaluators: load a registry version, score completions, decode greedily."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.backends.local import greedy_replies, load_model, logits_at


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
        out: list[tuple[float, int]] = [(0.0, 0)] * len(items)
        pad = self.tokenizer.pad_token_id or 0
        all_encoded = [self._encode(p, r) for p, r in items]
        order = sorted(range(len(items)), key=lambda i: len(all_encoded[i][0]))  # similar lengths batch together
        for start in range(0, len(items), self.batch_size):
            batch = order[start:start + self.batch_size]
            encoded = [all_encoded[i] for i in batch]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (row, _) in enumerate(encoded):  # right padding: positions start at 0 for every row
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            for i, value in zip(batch, self._reply_logprobs(ids, mask, encoded)):
                out[i] = value
        return out

    def _reply_logprobs(self, ids: torch.Tensor, mask: torch.Tensor,
                        encoded: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
        """Summed log-probs of the reply tokens (the output head on the reply positions only: `logits_at`)."""
        rows, cols = [], []
        for i, (row, n_reply) in enumerate(encoded):
            end = len(row) - 1  # the hidden state at t predicts token t+1
            rows += [i] * n_reply
            cols += list(range(end - n_reply, end))
        rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
        logits = logits_at(self.model, ids, mask, rows_t, cols_t).float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows_t, cols_t + 1][:, None])[:, 0]
        sums = torch.zeros(len(encoded), dtype=torch.float64).index_add_(0, rows_t, picked.double().cpu())
        return [(float(sums[i]), n_reply) for i, (_, n_reply) in enumerate(encoded)]

    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 64, guesses: list[str] | None = None) -> list[str]:
        """Greedy replies; `guesses` (another version's greedy replies) are verified first, see `greedy_replies`."""
        return greedy_replies(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size, guesses)


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
