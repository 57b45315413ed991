"""The scripted people of the demo: end users who ask corpus questions and give thumbs, and reviewers
who rate, correct (with the corpus answer), compare and flag, with realistic noise; one is unreliable.

Everything here talks to hitl through its public HTTP API only. The answer key is the demo's own
knowledge (`demo/data/trivia.jsonl`); the product never sees it except through what reviewers write.
"""

import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Item:
    """One question with its answer, the reply a reviewer writes when correcting (a full sentence), the
    phrases that count as correct, and paraphrases nobody reviews."""

    id: str
    question: str
    answer: str
    keys: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()
    correction: str = ""


def _load(name: str) -> list[Item]:
    items = []
    for line in (DATA / name).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(Item(row["id"], row["question"], row["answer"], tuple(row["keys"]),
                              tuple(row.get("paraphrases", ())), row.get("correction") or row["answer"]))
    return items


def load_items() -> list[Item]:
    """Questions the base model gets wrong: end users ask them, reviewers correct them."""
    return _load("trivia.jsonl")


def load_everyday() -> list[Item]:
    """Questions the base model already answers that end users ask too: reviewers approve those replies."""
    return _load("everyday.jsonl")


def load_general() -> list[Item]:
    """Questions the base model already answers: the demo's own forgetting check (never asked by users)."""
    return _load("general.jsonl")


def normalize(text: str) -> str:
    """Lower case, accents and punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", " ", text.lower())
    return f" {' '.join(text.split())} "


def is_correct(reply: str, keys: tuple[str, ...]) -> bool:
    """'Answered correctly': some key phrase appears in the reply as whole words, after `normalize`."""
    norm = normalize(reply)
    return any(normalize(k) in norm for k in keys)


# ----------------------------------------------------------------------------------- HTTP helpers


def chat(client: httpx.Client, question: str, *, user: str | None = None, temperature: float | None = None,
         max_tokens: int = 48, seed: int | None = None) -> dict:
    """One end-user turn through `/v1/chat/completions`; returns {text, message_id, conversation_id, version}."""
    body: dict = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    if user:
        body["user"] = user
    if temperature is not None:
        body["temperature"] = temperature
    if seed is not None:
        body["seed"] = seed
    resp = client.post("/v1/chat/completions", json=body)
    resp.raise_for_status()
    data = resp.json()
    return {"text": data["choices"][0]["message"]["content"], "message_id": data["hitl"]["message_id"],
            "conversation_id": data["hitl"]["conversation_id"], "version": data["hitl"]["model_version"]}


# ----------------------------------------------------------------------------------- end users


@dataclass
class EndUser:
    """Gives a thumbs-down to a wrong answer and a thumbs-up to a right one, but not always (noise)."""

    name: str
    rng: random.Random
    feedback_rate: float = 0.9   # share of replies that get any thumbs at all
    slip_rate: float = 0.05      # share of thumbs given the wrong way round

    def thumbs(self, client: httpx.Client, message_id: str, correct: bool) -> str | None:
        if self.rng.random() > self.feedback_rate:
            return None
        good = correct != (self.rng.random() < self.slip_rate)
        value = "up" if good else "down"
        comment = None if good else self.rng.choice([None, "That's wrong.", "Not the right answer.", "No."])
        resp = client.post("/v1/feedback", json={"message_id": message_id, "thumbs": value, "comment": comment})
        resp.raise_for_status()
        return value


# ----------------------------------------------------------------------------------- reviewers


@dataclass
class Reviewer:
    """A scripted reviewer. `noise` is the chance a score moves by ±1; `unreliable` rates at random
    and never corrects. Knows the answer key (like a domain expert with a reference book)."""

    name: str
    key: str
    rng: random.Random
    noise: float = 0.2
    correct_rate: float = 1.0    # share of wrong replies it corrects
    compare_rate: float = 0.0    # share of items where it asks for two candidates and compares them
    flag_rate: float = 0.1       # share of wrong replies it flags as a hallucination
    unreliable: bool = False
    log: list[dict] = field(default_factory=list)

    def _score(self, base: int) -> int:
        if self.unreliable:
            return self.rng.randint(1, 5)
        if self.rng.random() < self.noise:
            base += self.rng.choice([-1, 1])
        return max(1, min(5, base))

    def scores(self, correct: bool, rubric: list[str]) -> dict[str, int]:
        base = {"correctness": 5 if correct else 1, "helpfulness": 5 if correct else 2, "tone": 4}
        return {dim: self._score(base.get(dim, 4 if correct else 2)) for dim in rubric}

    def review_one(self, client: httpx.Client, answer_key: dict[str, Item], compare_budget: list[int]) -> bool:
        """Claim the next item and act on it; False when the queue has nothing left for this reviewer."""
        resp = client.post("/api/review/claim")
        if resp.status_code == 204:
            return False
        resp.raise_for_status()
        claim = resp.json()
        message_id = claim["message_id"]
        turns = claim["conversation"]
        question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
        reply = turns[-1]["content"]
        item = answer_key.get(question.strip())
        item_url = f"/api/review/items/{message_id}"
        if item is None:  # not something this reviewer can judge
            client.post(f"{item_url}/skip", json={"reason": "outside my domain"}).raise_for_status()
            self.log.append({"message_id": message_id, "action": "skip"})
            return True
        correct = is_correct(reply, item.keys)
        rubric = claim.get("rubric") or ["correctness", "helpfulness", "tone"]
        done = {"message_id": message_id, "item": item.id, "reply_correct": correct}
        scores = self.scores(correct, rubric)
        client.post(f"{item_url}/rating", json={"scores": scores}).raise_for_status()
        done["scores"] = scores
        if not correct and not self.unreliable and self.rng.random() < self.correct_rate:
            client.post(f"{item_url}/correction", json={"content": item.correction}).raise_for_status()
            done["correction"] = item.correction
        if not correct and self.rng.random() < self.flag_rate:
            client.post(f"{item_url}/flag", json={"tags": ["hallucination"],
                                                  "comment": "States a wrong fact."}).raise_for_status()
            done["flag"] = ["hallucination"]
        if compare_budget[0] > 0 and self.rng.random() < self.compare_rate:
            compare_budget[0] -= 1
            done["comparison"] = self._compare(client, item_url, item)
        client.post(f"{item_url}/submit").raise_for_status()
        self.log.append(done)
        return True

    def _compare(self, client: httpx.Client, item_url: str, item: Item) -> str:
        resp = client.post(f"{item_url}/candidates")
        resp.raise_for_status()
        a, b = resp.json()[:2]
        ok_a, ok_b = is_correct(a["content"], item.keys), is_correct(b["content"], item.keys)
        if self.unreliable:
            choice = self.rng.choice(["a", "b", "tie"])
        elif ok_a != ok_b:
            choice = "a" if ok_a else "b"
        else:  # both right or both wrong: prefer the shorter one unless they are close
            la, lb = len(a["content"]), len(b["content"])
            choice = "tie" if abs(la - lb) < 20 else ("a" if la < lb else "b")
        client.post(f"{item_url}/comparison", json={"candidate_a": a["candidate_id"],
                                                    "candidate_b": b["candidate_id"],
                                                    "choice": choice}).raise_for_status()
        return choice


def make_reviewers(keys: dict[str, str], seed: int, compare_rate: float) -> list[Reviewer]:
    """Four careful reviewers with some noise and one who clicks at random."""
    profiles = [
        dict(name="alice", noise=0.10, correct_rate=1.0, flag_rate=0.15),
        dict(name="bob", noise=0.20, correct_rate=0.9, flag_rate=0.05),
        dict(name="carol", noise=0.25, correct_rate=1.0, flag_rate=0.10),
        dict(name="dave", noise=0.30, correct_rate=0.8, flag_rate=0.0),
        dict(name="mallory", noise=0.0, correct_rate=0.0, flag_rate=0.0, unreliable=True),
    ]
    return [Reviewer(key=keys[p["name"]], rng=random.Random(seed + i), compare_rate=compare_rate, **p)
            for i, p in enumerate(profiles) if p["name"] in keys]


REVIEWER_NAMES = ("alice", "bob", "carol", "dave", "mallory")
