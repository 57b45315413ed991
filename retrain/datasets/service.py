"""Build content-hashed, immutable dataset snapshots from the feedback store, and read them back.

Pipeline: read the store (bulk) → resolve consensus → SFT / DPO / KTO candidates (deleted and
flagged contexts left out, PII redacted) → optional paraphrase expansion → token-length limit →
replay mix → exact and near-duplicate removal (test wins over validation wins over train) → KTO
class check → rows sorted by their own hash → snapshot hash over the rows → files + manifest +
database row.

Splits (split.py): every context is grouped by its question (normalized last user turn, near
duplicates merged); a group's split is persisted the first time it is seen and never changes. Files:
`{sft,dpo,kto}.{train,validation,test}.jsonl` (+ Parquet when not empty) and, with anchors,
`sft.anchor.jsonl` (train side only). Training reads train and validation; only the gates read test.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from core.models import utcnow
from core.settings import Settings
from retrain.datasets import anchors, dpo, kto, sft
from retrain.datasets import split as splitting
from retrain.datasets.cleaning import TokenCounter, near_duplicate_groups
from retrain.datasets.common import Example, Prep, assess, resolve_corrections
from retrain.datasets.models import DatasetSnapshot
from retrain.datasets.replay import replay_rows
from retrain.datasets.repository import load_store
from retrain.datasets.schemas import ANCHOR, KINDS, SPLITS, BuildOptions

log = logging.getLogger(__name__)
BUILDER_VERSION = "1.0"
DEFAULT_RUBRIC = ["correctness", "helpfulness", "tone"]
SOURCE_RANK = {"feedback": 0, "replay": 1, "paraphrase": 2, "anchor": 3}
SPLIT_RANK = {"test": 0, "validation": 1, "train": 2}  # dedup keeps the copy in the highest split

Progress = Callable[[str], None]


class DatasetError(ValueError):
    """A build that cannot produce what was asked (e.g. KTO without one class)."""


def build_snapshot(session: Session, settings: Settings, options: BuildOptions | None = None,
                   *, created_by: int | None = None, progress: Progress | None = None) -> DatasetSnapshot:
    """Build (or find the identical existing) snapshot; only flushes."""
    return build(session, settings, options, created_by=created_by, progress=progress)[0]


def build(session: Session, settings: Settings, options: BuildOptions | None = None,
          *, created_by: int | None = None, progress: Progress | None = None) -> tuple[DatasetSnapshot, bool]:
    """Like `build_snapshot`, also saying whether a new snapshot was created."""
    options = options or BuildOptions()
    step = progress or (lambda _msg: None)
    timings: dict[str, list[float]] = {}  # phase -> [wall s, CPU s]
    clock = (time.perf_counter(), time.process_time())

    def lap(name: str) -> None:
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        timings[name] = [round(now[0] - clock[0], 3), round(now[1] - clock[1], 3)]
        clock = now

    step("reading feedback")
    store = load_store(session, options.as_of, served=options.anchors * 4)
    lap("read")
    reliability, reliability_source = _reliability(session, options.as_of or utcnow())
    lap("reliability")
    rubric = list(getattr(settings, "review_rubric", None) or DEFAULT_RUBRIC)
    prep = Prep(store, options, rubric, reliability)
    prep.redact_all([t.content for turns in store.turns.values() for t in turns]
                    + [row[3] for row in store.corrections] + [c[1] for c in store.candidates.values()])
    lap("redact")
    step("assigning splits")
    prep.assign_splits(session)
    lap("split")

    step("resolving consensus")
    assessments = assess(prep)
    corrections = resolve_corrections(prep, assessments)
    kinds = list(options.kinds or KINDS)
    builders = {"sft": sft.build, "dpo": dpo.build, "kto": kto.build}
    examples = {k: (builders[k](prep, assessments, corrections) if k in kinds else []) for k in KINDS}
    lap("build")

    expansion = None
    if options.paraphrases and "sft" in kinds:
        step("paraphrasing corrected prompts")
        from retrain.datasets.expansion import ExpansionError, expand

        try:
            variants, expansion = expand(prep, examples["sft"], settings,
                                         settings.data_dir / "datasets" / "paraphrase-cache.jsonl")
        except ExpansionError as exc:
            raise DatasetError(str(exc)) from exc
        examples["sft"] += variants
        lap("expansion")

    if "sft" in kinds:
        served = anchors.build(prep, assessments, corrections, examples["sft"], options.anchors)
        general = replay_rows(options.anchor_general, source="anchor")
        examples["sft"] += served + [Example("sft", "train", r, f"anchor:general:{i}") for i, r in enumerate(general)]

    step("length limits")
    counter = TokenCounter(options.tokenizer or str(settings.base_model_path))
    token_cache: dict[str, int] = {}
    for k in KINDS:
        examples[k] = _length_filter(prep, counter, token_cache, k, examples[k])
    lap("length")

    replay_n = 0
    if options.replay_fraction and "sft" in kinds:
        train = sum(1 for e in examples["sft"] if e.split == "train")
        rows = replay_rows(round(options.replay_fraction * train))
        examples["sft"] += [Example("sft", "train", r, f"replay:{i}") for i, r in enumerate(rows)]
        replay_n = len(rows)

    step("removing duplicates")
    for k in KINDS:
        examples[k] = _deduplicate(prep, k, examples[k], options.near_duplicate_threshold)
    lap("dedup")
    anchor_rows = [e for e in examples["sft"] if e.row["lineage"]["source"] == "anchor"]
    examples["sft"] = [e for e in examples["sft"] if e.row["lineage"]["source"] != "anchor"]

    kto_balance = kto.balance(examples["kto"])
    kto_refused = None
    if "kto" in kinds:
        try:
            kto.check_classes(kto_balance)
        except kto.MissingClassError as exc:
            if options.kinds:  # asked for explicitly: refuse the build
                raise DatasetError(str(exc)) from exc
            kto_refused = str(exc)  # default build: leave KTO empty, say why
            prep.drop("kto", "kto_missing_class", len(examples["kto"]))
            examples["kto"] = []

    step("writing snapshot")
    files = {(k, s): sorted((_line(e) for e in examples[k] if e.split == s), key=lambda x: x[:2])
             for k in KINDS for s in SPLITS}
    if options.anchors or options.anchor_general:
        files[ANCHOR] = sorted((_line(e) for e in anchor_rows), key=lambda x: x[:2])
    digest = hashlib.sha256(f"hitl-datasets {BUILDER_VERSION}\n".encode())
    for (k, s), lines in files.items():
        digest.update(f"{k}.{s}\n".encode())
        for _sha, line, _row in lines:
            digest.update(line.encode() + b"\n")
    snapshot_hash = digest.hexdigest()
    counts = {k: {s: len(files[(k, s)]) for s in SPLITS} for k in KINDS}

    splitting.persist(session, prep.new_assignments)  # new question groups keep their split from now on
    existing = session.exec(select(DatasetSnapshot).where(DatasetSnapshot.hash == snapshot_hash)).first()
    target = (settings.data_dir / "datasets" / snapshot_hash).resolve()
    manifest = {
        "hash": snapshot_hash,
        "builder_version": BUILDER_VERSION,
        "created_at": (existing.created_at if existing else utcnow()).isoformat(),
        "options": options.model_dump(mode="json"),
        "counts": counts,
        "sources": {k: dict(Counter(e.row["lineage"]["source"] for e in examples[k])) for k in KINDS},
        "via": {k: dict(Counter(e.row["lineage"].get("via", e.row["lineage"]["source"]) for e in examples[k]))
                for k in KINDS},
        "filters": {k: dict(sorted(prep.drops[k].items())) for k in list(KINDS) + ["correction"]
                    if prep.drops.get(k)},
        "conflicts": {k: dict(v) for k, v in prep.conflicts.items()},
        "pii_redactions": dict(prep.pii),
        "kto_balance": kto_balance,
        "kto_refused": kto_refused,
        "split": {"method": "persisted per question group (normalized last user turn, near duplicates by MinHash "
                            "LSH over word 3-grams); new groups by largest deficit in sha256(salt:key) order, "
                            "inheriting the split of an assigned group that shares a conversation",
                  "fractions": {"train": round(1 - options.validation_fraction - options.test_fraction, 6),
                                "validation": options.validation_fraction, "test": options.test_fraction},
                  "question_similarity": options.question_similarity, "salt": options.split_salt,
                  "readers": {"train": "training", "validation": "training (early stopping, model choice)",
                              "test": "gates only"},
                  **prep.split_report},
        "length": {"max_tokens": options.max_tokens, "tokenizer": counter.source, "exact": counter.exact,
                   "texts_tokenized": counter.tokenized,
                   "rule": "prompt + completion (DPO: the longer answer) tokens incl. chat overhead; examples "
                           "whose UTF-8 byte count already fits are not tokenized (tokens ≤ bytes)"},
        "dedup": {"exact": "normalized full content", "near": "MinHash LSH (datasketch affine32), word 3-grams",
                  "threshold": options.near_duplicate_threshold,
                  "rule": "test wins over validation wins over train: the lower split's copies are removed"},
        "replay": {"rows": replay_n, "fraction": options.replay_fraction, "source": "retrain/datasets/data/general.jsonl"},
        "anchors": {"rows": len(anchor_rows), "limit": options.anchors, "general": options.anchor_general,
                    "file": "sft.anchor.jsonl",
                    "rule": "latest served train-split replies not corrected, judged bad or flagged, whose prompt "
                            "no training example has, plus `general` rows of the replay pool; held to the "
                            "champion's distributions, never a target"},
        "expansion": _expansion_report(expansion, examples["sft"]),
        "reviewer_reliability": reliability_source,
        "lineage": "each row's `lineage` (feedback ids, reviewer ids, conversation, message, question group, "
                   "source; SFT: origin correction | approved); "
                   "manifest.json on disk adds `examples`: per file, row i -> [feedback ids, reviewer ids]",
        "rubric": rubric,
        "feedback_watermark": store.watermark,
        "as_of": options.as_of.isoformat() if options.as_of else None,
        "timings_s": timings,
        "files": {f"{k}.{s}": {"jsonl": f"{k}.{s}.jsonl", "parquet": f"{k}.{s}.parquet" if files[(k, s)] else None,
                               "rows": len(lines)} for (k, s), lines in files.items()},
    }
    if existing is not None:
        if not (Path(existing.path) / "manifest.json").exists():
            _write(Path(existing.path), files, {**existing.manifest, "examples": _index(files)})
        return existing, False
    _write(target, files, {**manifest, "examples": _index(files)})
    lap("write")
    manifest["timings_s"] = timings
    snap = DatasetSnapshot(hash=snapshot_hash, path=str(target), counts=counts, manifest=manifest,
                           builder_version=BUILDER_VERSION, created_by=created_by)
    session.add(snap)
    session.flush()
    return snap, True


def load_split(snapshot_path: str | Path, kind: str, split: str) -> list[dict]:
    """The rows of one kind and split (train, validation, test; or sft.anchor) of a snapshot."""
    if (kind, split) != ANCHOR and (kind not in KINDS or split not in SPLITS):
        raise ValueError(f"kind must be one of {KINDS} and split one of {SPLITS} (or sft.anchor)")
    path = Path(snapshot_path) / f"{kind}.{split}.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def get_snapshot(session: Session, snapshot_id: int) -> DatasetSnapshot | None:
    return session.get(DatasetSnapshot, snapshot_id)


def list_snapshots(session: Session, limit: int = 100) -> list[DatasetSnapshot]:
    return list(session.exec(select(DatasetSnapshot).order_by(DatasetSnapshot.id.desc()).limit(limit)))


# --------------------------------------------------------------------------------------- helpers


def _reliability(session: Session, as_of: datetime) -> tuple[dict[int, float], str]:
    """Reviewer vote weights from feedback created at or before `as_of` (the build's `options.as_of`,
    else its start), so rebuilding an old snapshot with its `as_of` weighs reviewers the same way."""
    try:
        from feedback.quality import reviewer_reliability
    except ImportError:
        return {}, "default 1.0 for every reviewer (feedback.quality.reviewer_reliability not available)"
    return reviewer_reliability(session, as_of=as_of), (
        f"feedback.quality.reviewer_reliability as of {as_of.isoformat()} (gold reliability, 0 below the floor; "
        "1.0 for unknown reviewers)")


def _canonical(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _line(e: Example) -> tuple[bytes, str, dict]:
    """(sha256, canonical JSON, row), computed once per example; files are sorted by the sha, so
    the order (and the hash) depends only on the content."""
    if e.line is None:
        text = _canonical(e.row)
        e.line = (hashlib.sha256(text.encode()).digest(), text, e.row)
    return e.line


def _said(m: dict) -> str:
    """A turn's text, then its tool calls (as JSON): what it costs in tokens and what tells it apart."""
    return m["content"] + (json.dumps(m["tool_calls"], sort_keys=True) if m.get("tool_calls") else "")


def _tokens(e: Example, count: Callable[[str], int]) -> int:
    """Prompt + completion tokens (DPO: the longer of chosen and rejected)."""
    n = sum(count(_said(m)) for m in e.prompt)
    if "chosen" in e.row:
        return n + max(count(_said(m)) for m in e.completion)
    return n + sum(count(_said(m)) for m in e.completion)


def _length_filter(prep: Prep, counter: TokenCounter, cache: dict[str, int], kind: str,
                   examples: list[Example]) -> list[Example]:
    """Drop empty completions and examples over `max_tokens` (tokenizing only the doubtful ones)."""
    limit = prep.options.max_tokens
    kept, doubtful = [], []
    for e in examples:
        if not all(m["content"].strip() or m.get("tool_calls") for m in e.completion):
            prep.drop(kind, "empty")
        elif _tokens(e, counter.upper_bound) <= limit:
            kept.append(e)
        else:
            doubtful.append(e)
    need = list({_said(m) for e in doubtful for part in (e.prompt, e.completion) for m in part} - cache.keys())
    cache.update(zip(need, counter.count(need), strict=True))
    for e in doubtful:
        if _tokens(e, cache.__getitem__) > limit:
            prep.drop(kind, "too_long")
        else:
            kept.append(e)
    return kept


def _keys(prep: Prep, e: Example) -> tuple[tuple, str]:
    """(exact-duplicate key over the whole normalized content, text compared for near duplicates:
    the last user turn and the completion(s), with the KTO label)."""
    label = e.row.get("label")
    exact = (prep.prompt_key(e.prompt), tuple((m["role"], prep.norm(_said(m))) for m in e.completion), label)
    last_user = next((m["content"] for m in reversed(e.prompt) if m["role"] == "user"), "")
    tag = {True: "desirable", False: "undesirable"}.get(label, "")
    return exact, "\n".join((tag, last_user, *(_said(m) for m in e.completion)))


def _deduplicate(prep: Prep, kind: str, examples: list[Example], threshold: float) -> list[Example]:
    """Exact then near duplicates. Test examples come first, then validation, then train, so the copy
    removed is always the one in the lower split (never a held-out one). Paraphrase variants are only
    checked against higher splits."""
    keyed = []
    for e in examples:
        exact, near = _keys(prep, e)
        order = (SPLIT_RANK[e.split], SOURCE_RANK[e.row["lineage"]["source"]], _line(e)[0])
        keyed.append((order, exact, near, e))
    keyed.sort(key=lambda x: x[0])

    first_split: dict[tuple, str] = {}
    survivors = []
    for _order, exact, near, e in keyed:
        if exact in first_split:
            prep.drop(kind, "cross_split_duplicate" if first_split[exact] != e.split else "duplicate")
            continue
        first_split[exact] = e.split
        survivors.append((near, e))

    roots = near_duplicate_groups([near for near, _ in survivors], threshold)
    top: dict[int, int] = {}  # near-duplicate group -> its highest split (lowest rank)
    for r, (_, e) in zip(roots, survivors, strict=True):
        top[r] = min(top.get(r, 9), SPLIT_RANK[e.split])
    kept_in: set[tuple[int, str]] = set()
    out = []
    for root, (_near, e) in zip(roots, survivors, strict=True):
        if SPLIT_RANK[e.split] > top[root]:
            prep.drop(kind, "cross_split_near_duplicate")
            continue
        if e.row["lineage"]["source"] != "paraphrase":
            if (root, e.split) in kept_in:
                prep.drop(kind, "near_duplicate")
                continue
            kept_in.add((root, e.split))
        out.append(e)
    return out


def _index(files: dict[tuple[str, str], list[tuple]]) -> dict[str, list]:
    """Per-example lineage for the on-disk manifest: per file, row i → [feedback ids, reviewer ids]."""
    return {f"{k}.{s}": [[row["lineage"]["feedback_ids"], row["lineage"]["reviewer_ids"]] for _sha, _l, row in lines]
            for (k, s), lines in files.items()}


def _write(target: Path, files: dict[tuple[str, str], list[tuple]], manifest: dict[str, Any]) -> None:
    """Write into a temporary folder, then rename: a snapshot folder is complete or absent."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        for (k, s), lines in files.items():
            with open(tmp / f"{k}.{s}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for _sha, line, _row in lines)
            if lines:  # same rows, parsed by pyarrow's C++ JSON reader
                try:
                    pq.write_table(pj.read_json(tmp / f"{k}.{s}.jsonl"), tmp / f"{k}.{s}.parquet")
                except pa.ArrowInvalid as exc:  # e.g. tool-call arguments of different types: no one schema
                    log.warning("%s.%s: JSONL only, no Parquet: %s", k, s, exc)
                    manifest["files"][f"{k}.{s}"]["parquet"] = None
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, default=str))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _expansion_report(report: dict | None, sft_examples: list[Example]) -> dict | None:
    if report is None:
        return None
    return {**report, "kept_in_snapshot": sum(1 for e in sft_examples if e.row["lineage"]["source"] == "paraphrase")}
