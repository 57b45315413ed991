"""Cleaning: PII redaction, exact and near-duplicate detection, token-count length limits.

PII redaction is a documented regex set (Presidio needs a spaCy model download, which this project
cannot do at run time). Each match is replaced by a typed placeholder:

| placeholder  | what                                                                  |
|--------------|-----------------------------------------------------------------------|
| `[EMAIL]`    | RFC-5322-ish addresses `local@domain.tld`                              |
| `[CARD]`     | 13-19 digit card numbers (spaces/dashes allowed) passing the Luhn check |
| `[IBAN]`     | IBANs (2 letters, 2 check digits, 11-30 alphanumerics) passing mod-97   |
| `[SSN]`      | US social security numbers `ddd-dd-dddd`                               |
| `[PHONE]`    | phone numbers: optional `+cc`, 7-15 digits with spaces, dots, dashes, () |
| `[IP]`       | IPv4 addresses (each octet 0-255) and full or `::`-compressed IPv6      |

Near duplicates: MinHash signatures in datasketch's `affine32` scheme (its permutations and its
MurmurHash3 finalizer, computed for all documents at once with numpy; equal to
`datasketch.MinHash(scheme="affine32").update_batch`, see the tests) and LSH banding with
datasketch's optimal (bands, rows) for the threshold; candidate pairs are confirmed by their
estimated Jaccard similarity.
"""

import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------- PII

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,13}"
                   r"(?!\w)(?![ .-]\d)")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
IPV6 = re.compile(
    r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?"
    r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![\w:])"
)


_DIGIT = re.compile(r"\d")


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    s = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


def _sub_checked(pattern: re.Pattern, check: Callable[[str], bool], label: str, text: str, hits: dict) -> str:
    def repl(m: re.Match) -> str:
        if not check(m.group()):
            return m.group()
        hits[label] = hits.get(label, 0) + 1
        return label

    return pattern.sub(repl, text)


def redact_pii(text: str, hits: dict[str, int] | None = None) -> str:
    """Replace PII by typed placeholders; `hits` (if given) counts replacements per placeholder."""
    hits = {} if hits is None else hits
    if "@" in text:
        text = _sub_checked(EMAIL, bool, "[EMAIL]", text, hits)
    if _DIGIT.search(text):
        text = _sub_checked(IBAN, iban_ok, "[IBAN]", text, hits)
        text = _sub_checked(CARD, luhn_ok, "[CARD]", text, hits)
        text = _sub_checked(SSN, bool, "[SSN]", text, hits)
        text = _sub_checked(IPV4, bool, "[IP]", text, hits)
        text = _sub_checked(PHONE, bool, "[PHONE]", text, hits)
    if "::" in text or text.count(":") >= 7:
        text = _sub_checked(IPV6, bool, "[IP]", text, hits)
    return text


def redact_many(texts: Sequence[str], hits: dict[str, int] | None = None) -> list[str]:
    """`redact_pii` over many texts: the texts a cheap test selects for a pattern group are joined
    by NUL (no pattern matches across a NUL) and scanned in one call, in C."""
    hits = {} if hits is None else hits
    out = [t.replace("\0", " ") if "\0" in t else t for t in texts]
    groups = (
        (lambda t: "@" in t, ((EMAIL, bool, "[EMAIL]"),)),
        (_DIGIT.search, ((IBAN, iban_ok, "[IBAN]"), (CARD, luhn_ok, "[CARD]"), (SSN, bool, "[SSN]"),
                         (IPV4, bool, "[IP]"), (PHONE, bool, "[PHONE]"))),
        (lambda t: "::" in t or t.count(":") >= 7, ((IPV6, bool, "[IP]"),)),
    )
    for test, patterns in groups:
        picked = [i for i, t in enumerate(out) if test(t)]
        if not picked:
            continue
        big = "\0".join(out[i] for i in picked)
        for pattern, check, label in patterns:
            big = _sub_checked(pattern, check, label, big, hits)
        for i, text in zip(picked, big.split("\0"), strict=True):
            out[i] = text
    return out


# --------------------------------------------------------------------------------------- duplicates

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used for exact-duplicate keys."""
    return " ".join(text.lower().split())


_PUNCT_RE2 = r"[!-/:-@\[-`{-~]"  # ASCII punctuation, as a RE2 class for pyarrow


def shingle_hashes(texts: Sequence[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the word n-grams of every text, flat, plus each text's start offset.

    Words: lower-cased, split on whitespace and ASCII punctuation (vectorized with pyarrow); each
    word hashed with crc32. Every text ends with `n` empty-word pads, so even an empty text has
    shingles and no n-gram spans two texts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.replace_substring_regex(pc.utf8_lower(pa.array(list(texts), type=pa.large_string())),
                                     pattern=_PUNCT_RE2, replacement=" ")
    lists = pc.utf8_split_whitespace(arr)
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    if len(flat):
        encoded = pc.dictionary_encode(flat)
        vocab = np.array([zlib.crc32(word.encode()) for word in encoded.dictionary.to_pylist()], dtype=np.uint64)
        words = vocab[encoded.indices.to_numpy(zero_copy_only=False)]
    else:
        words = np.zeros(0, dtype=np.uint64)
    w = np.insert(words, np.repeat(np.cumsum(counts), n), 0)  # n pads after every text
    lengths = counts + n
    m = len(w) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # polynomial combination of the word hashes, mod 2^32
        h = (h * np.uint64(1_000_003) + w[k: k + m]) & np.uint64(0xFFFFFFFF)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    valid = np.ones(m, dtype=bool)
    for k in range(1, n):  # n-grams that would cross into the next text
        ends = starts[1:] - k
        valid[ends[ends >= 0]] = False
    counts = lengths - n + 1
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return h[valid].astype(np.uint32), offsets


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 64, seed: int = 1) -> np.ndarray:
    """(len(offsets), num_perm) uint32 signatures of the shingle groups starting at `offsets`,
    identical to datasketch `MinHash(scheme="affine32", hashfunc=identity).update_batch(group)`."""
    from datasketch import MinHash
    from datasketch.minhash import _fmix

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    hv = _fmix(hashes.astype(np.uint32), 32)
    ends = np.append(offsets[1:], len(hv))
    out = np.empty((num_perm, len(offsets)), dtype=np.uint32)
    step = max(1, 4_000_000 // num_perm)  # bound the (perms x shingles) block to ~16 MB
    doc = 0
    while doc < len(offsets):
        last = max(int(np.searchsorted(ends, offsets[doc] + step, side="right")), doc + 1)
        lo, hi = int(offsets[doc]), int(ends[last - 1])
        with np.errstate(over="ignore"):
            phv = a[:, None] * hv[None, lo:hi] + b[:, None]
        out[:, doc:last] = np.minimum.reduceat(phv, offsets[doc:last] - lo, axis=1)
        doc = last
    return np.ascontiguousarray(out.T)


def lsh_buckets(sigs: np.ndarray, threshold: float):
    """Index arrays of the rows of `sigs` that share an LSH band (datasketch's optimal (bands, rows)
    for `threshold`); candidate pairs still need confirming by their estimated Jaccard."""
    from datasketch.lsh import _optimal_param

    if len(sigs) < 2:
        return
    bands, rows = _optimal_param(threshold, sigs.shape[1], 0.5, 0.5)
    for band in range(bands):
        block = np.ascontiguousarray(sigs[:, band * rows: (band + 1) * rows])
        _, inverse, counts = np.unique(block.view(np.dtype((np.void, block.shape[1] * 4))).ravel(),
                                       return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        shared = counts[inverse] > 1
        if not shared.any():
            continue
        idx = np.nonzero(shared)[0]
        order = idx[np.argsort(inverse[idx], kind="stable")]
        yield from np.split(order, np.nonzero(np.diff(inverse[order]))[0] + 1)


def similar(sigs: np.ndarray, i: int, j: int, threshold: float) -> bool:
    """Estimated Jaccard similarity of rows i and j of `sigs` is at least `threshold`."""
    return bool(np.mean(sigs[i] == sigs[j]) >= threshold)


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.85, num_perm: int = 64) -> list[int]:
    """For each text, the index of the first text of its near-duplicate group (itself if none)."""
    n = len(texts)
    parent = list(range(n))
    if n < 2:
        return parent
    sigs = minhash_signatures(*shingle_hashes(texts), num_perm=num_perm)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for bucket in lsh_buckets(sigs, threshold):
        first = int(bucket[0])
        for other in bucket[1:]:
            other = int(other)
            if find(first) == find(other):
                continue
            if similar(sigs, first, other, threshold):
                ra, rb = find(first), find(other)
                parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


# ------------------------------------------------------------------------------------------ length


class TokenCounter:
    """Token counts with the model's tokenizer (chat-template overhead per message measured once).

    A byte-level BPE or byte-fallback tokenizer never makes more tokens than a text has UTF-8 bytes
    (+1 for a prefix space), so `upper_bound` decides most examples without tokenizing; `count`
    tokenizes (lazily loading the tokenizer) only the texts that need it. Without a tokenizer it
    falls back to `len(text) / 4`; `exact` says which was used.
    """

    def __init__(self, tokenizer_path: str | None):
        self.path = tokenizer_path if tokenizer_path and Path(tokenizer_path).is_dir() else None
        self.source = self.path or "len(text) / 4 (no tokenizer)"
        self._tokenizer = None
        self._per_message: int | None = None if self.path else 4
        self.tokenized = 0

    @property
    def exact(self) -> bool:
        return self.path is not None

    @property
    def per_message(self) -> int:
        if self._per_message is None:
            self._load()
        return self._per_message

    def _load(self) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self._per_message = 4
        if self._tokenizer.chat_template:
            one = [{"role": "user", "content": "x"}]
            two = one + [{"role": "assistant", "content": "x"}]
            n1 = len(self._ids(self._tokenizer.apply_chat_template(one, tokenize=True)))
            n2 = len(self._ids(self._tokenizer.apply_chat_template(two, tokenize=True)))
            self._per_message = max(0, n2 - n1 - 1)

    @staticmethod
    def _ids(encoded) -> list[int]:
        return encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded

    def upper_bound(self, text: str) -> int:
        """A count no smaller than `count([text])[0]` (chat overhead bounded by 16 tokens)."""
        if not self.exact:
            return len(text) // 4 + 1 + 4
        size = len(text) if text.isascii() else len(text.encode())
        return size + 1 + (self._per_message if self._per_message is not None else 16)

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text, plus the chat-template overhead of one message."""
        if not texts:
            return []
        if not self.exact:
            return [len(t) // 4 + 1 + 4 for t in texts]
        if self._tokenizer is None:
            self._load()
        self.tokenized += len(texts)
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [len(e.ids) + self._per_message for e in encode(list(texts), add_special_tokens=False)]
        ids = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) + self._per_message for x in ids]
