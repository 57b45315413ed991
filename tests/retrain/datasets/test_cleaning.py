"""Cleaning units (no database): PII regexes, MinHash equivalence with datasketch, near duplicates,
the split's question form and deficit rule, the shipped general data."""

from collections import Counter

import numpy as np
import pytest
from datasketch import MinHash

from retrain.datasets.cleaning import (
    TokenCounter, iban_ok, luhn_ok, minhash_signatures, near_duplicate_groups, redact_pii, shingle_hashes,
)
from retrain.datasets.split import pick_split, question_hash, question_text


@pytest.mark.parametrize("text,expected", [
    ("write to jane.doe+x@mail.example.co.uk now", "write to [EMAIL] now"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn"),
    ("IBAN GB82 WEST 1234 5698 7654 32.", "IBAN [IBAN]."),
    ("SSN 078-05-1120", "SSN [SSN]"),
    ("call +1 (415) 555-2671 or 020 7946 0958", "call [PHONE] or [PHONE]"),
    ("host 192.168.10.254 and 2001:db8:85a3::8a2e:370:7334", "host [IP] and [IP]"),
    ("In 2024 we sold 3 cars for 15000 dollars; version 1.2.3", "In 2024 we sold 3 cars for 15000 dollars; version 1.2.3"),
])
def test_redact_pii(text, expected):
    hits: dict = {}
    assert redact_pii(text, hits) == expected
    assert sum(hits.values()) == expected.count("[")


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")


def test_signatures_equal_datasketch():
    texts = ["the quick brown fox jumps over the lazy dog", "hi", "", "a b c", "one two three four five six"]
    hashes, offsets = shingle_hashes(texts)
    sigs = minhash_signatures(hashes, offsets, num_perm=64)
    ends = list(offsets[1:]) + [len(hashes)]
    for i in range(len(texts)):
        ref = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=int)
        ref.update_batch(hashes[offsets[i]:ends[i]].tolist())
        assert np.array_equal(sigs[i], ref.hashvalues)


def test_near_duplicates():
    base = " ".join(f"word{i}" for i in range(60))
    texts = [base, base.replace("word59", "changed"), "something else entirely about cats and dogs", base + " more"]
    roots = near_duplicate_groups(texts, threshold=0.85)
    assert roots == [0, 0, 2, 0]
    assert near_duplicate_groups(texts, threshold=0.999) == [0, 1, 2, 3]


def test_largest_deficit_assignment():
    fractions = {"test": 0.2, "validation": 0.1, "train": 0.7}
    counts: Counter = Counter()
    order = []
    for _ in range(30):
        split = pick_split(fractions, counts)
        counts[split] += 1
        order.append(split)
    assert counts == {"test": 6, "validation": 3, "train": 21}
    assert order[:5] == ["train", "test", "train", "train", "validation"]  # each prefix as near the targets as can be
    assert pick_split({"test": 0.2, "validation": 0.1, "train": 0.7}, Counter({"train": 5})) == "test"
    assert pick_split({"test": 0.0, "validation": 0.0, "train": 1.0}, Counter({"test": 9})) == "train"
    assert pick_split({"test": 0.5, "validation": 0.0, "train": 0.5}, Counter()) == "test"  # tie: test first


def test_question_text():
    assert question_text("  What's the CAPITAL of France?! ") == "what is the capital of france"
    assert question_text("I can’t log in, won't it work?") == "i can not log in will not it work"
    assert question_hash(question_text("Hi!")) == question_hash("hi") != question_hash("hello")


def test_token_counter_bound(tiny_model_dir):
    counter = TokenCounter(str(tiny_model_dir))
    texts = ["The capital of France is Paris.", "ünïcödé ✓ text", "x" * 50]
    exact = counter.count(texts)
    assert all(counter.upper_bound(t) >= n for t, n in zip(texts, exact, strict=True))
    assert counter.exact and not TokenCounter("/nonexistent").exact


def test_general_and_forgetting_are_disjoint():
    from retrain.datasets.replay import forgetting_set, general_examples

    general, forgetting = general_examples(), forgetting_set()
    assert len(general) > 150 and len(forgetting) > 30
    prompts = {r["messages"][0]["content"] for r in general}
    assert not prompts & {r["messages"][0]["content"] for r in forgetting}
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in general + forgetting)


def test_redact_many_matches_one_by_one():
    from retrain.datasets.cleaning import redact_many

    texts = ["mail a.b@c.io", "", "card 4111 1111 1111 1111", "no pii here 12", "ip 10.0.0.1\nand +1 415 555 2671",
             "x\0y bob@d.org"]
    one, many = {}, {}
    assert redact_many(texts, many) == [redact_pii(t.replace("\0", " "), one) for t in texts]
    assert one == many
