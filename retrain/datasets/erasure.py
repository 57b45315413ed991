"""Privacy deletions reach the files: every existing snapshot loses the rows that mention a deleted
conversation, message or text (JSONL and Parquet rewritten, the manifest records the redaction), the
paraphrase cache forgets their paraphrases, and the other files derived from them (the gates' eval cache,
reports, retrain run folders) are swept: a cache file that mentions one is dropped (it is recomputed on
demand), any other is redacted in place. The app registers `erase` in `feedback.service.ERASERS`."""

import html
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from core.models import utcnow
from core.settings import get_settings
from feedback.service import Erasure, mentions
from retrain.datasets.cleaning import redact_pii
from retrain.datasets.expansion import ParaphraseCache
from retrain.datasets.models import DatasetSnapshot

log = logging.getLogger(__name__)
# data dir folders holding text derived from the store, besides snapshots; caches among them are dropped, not redacted
SWEPT, CACHES = ("eval-cache", "reports", "retrain"), ("eval-cache",)
WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}  # tensors: no text to find, and large
REDACTED = "[redacted: privacy deletion]"
MIN_INSIDE = 8  # a deleted text this long is erased inside other text too; a shorter one ("ok") only where it is whole


def erase(session: Session, erasure: Erasure) -> None:
    needles = erasure.needles | {redact_pii(t) for t in erasure.texts}  # snapshots hold PII-redacted text
    removed_texts: set[str] = set()
    for snap in session.exec(select(DatasetSnapshot)):
        folder = Path(snap.path)
        removed = {path.name.removesuffix(".jsonl"): n for path in sorted(folder.glob("*.jsonl"))
                   if (n := _rewrite(path, needles, removed_texts))}
        if removed:
            snap.counts = _counts(snap.counts, folder)
            snap.manifest = _note(snap.manifest, folder, removed)
            _write_json(folder / "manifest.json", {**_note(_read_json(folder / "manifest.json"), folder, removed),
                                                    "examples": _index(folder)})
            session.add(snap)
    data_dir = get_settings().data_dir
    ParaphraseCache(data_dir / "datasets" / "paraphrase-cache.jsonl").forget(needles | removed_texts, removed_texts)
    _sweep(data_dir, needles | removed_texts)


def _sweep(data_dir: Path, needles: set[str]) -> None:
    """Drop or redact every file under SWEPT that holds a needle, as written raw, in JSON or in HTML."""
    inside = sorted((n for n in needles if len(n) >= MIN_INSIDE), key=len, reverse=True)
    whole = {json.dumps(n, ensure_ascii=a).encode() for n in needles if len(n) < MIN_INSIDE for a in (True, False)}
    forms = {n: _forms(n) for n in inside}
    for top in SWEPT:
        for path in sorted((data_dir / top).rglob("*")):
            if not path.is_file() or path.suffix in WEIGHTS:
                continue
            data = path.read_bytes()
            if not any(f.encode() in data for n in inside for f in forms[n]) and not any(w in data for w in whole):
                continue
            if top in CACHES:
                path.unlink()
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # e.g. TensorBoard events: no way to cut the text out, so the file goes
                path.unlink()
                log.warning("privacy deletion removed %s", path)
                continue
            if path.suffix == ".json":
                try:
                    _write_json(path, _redact_value(json.loads(text), inside, {json.loads(w) for w in whole}))
                    continue
                except ValueError:
                    pass
            for n in inside:
                for form in forms[n]:
                    text = text.replace(form, REDACTED)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)


def _forms(text: str) -> list[str]:
    """How `text` may be written into a file: raw, escaped in JSON (ASCII or not), and both escaped for HTML."""
    escaped = {json.dumps(text, ensure_ascii=a)[1:-1] for a in (True, False)} | {text}
    return sorted(escaped | {html.escape(e) for e in escaped}, key=len, reverse=True)


def _redact_value(value: Any, inside: list[str], whole: set[str]) -> Any:
    if isinstance(value, str):
        if value in whole:
            return REDACTED
        for n in inside:
            value = value.replace(n, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _redact_value(v, inside, whole) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, inside, whole) for v in value]
    return value


def _rewrite(path: Path, needles: set[str], removed_texts: set[str]) -> int:
    """Drop the rows mentioning a needle from one JSONL file and its Parquet twin; the number dropped."""
    rows = _rows(path)
    kept = [row for row in rows if not mentions(row, needles)]
    if len(kept) == len(rows):
        return 0
    for row in rows:
        if mentions(row, needles):
            removed_texts.update(_contents(row))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
                           for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    parquet = path.with_suffix(".parquet")
    parquet.unlink(missing_ok=True)
    if kept:
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        pq.write_table(pj.read_json(path), parquet)
    return len(rows) - len(kept)


def _note(manifest: dict[str, Any], folder: Path, removed: dict[str, int]) -> dict[str, Any]:
    files = {name: {**entry, "rows": len(_rows(folder / entry["jsonl"])),
                    "parquet": entry["parquet"] if (folder / f"{name}.parquet").exists() else None}
             for name, entry in manifest.get("files", {}).items()}
    redaction = {"at": utcnow().isoformat(), "reason": "privacy deletion", "rows_removed": removed,
                 "note": "rows removed after the build: the files no longer hash to `hash`"}
    return {**manifest, "counts": _counts(manifest.get("counts", {}), folder), "files": files,
            "redactions": [*manifest.get("redactions", []), redaction]}


def _counts(counts: dict[str, dict[str, int]], folder: Path) -> dict[str, dict[str, int]]:
    return {kind: {split: len(_rows(folder / f"{kind}.{split}.jsonl")) for split in splits}
            for kind, splits in counts.items()}


def _index(folder: Path) -> dict[str, list]:
    """The on-disk manifest's per-example lineage (row i → [feedback ids, reviewer ids]), recomputed."""
    return {path.name.removesuffix(".jsonl"): [[r["lineage"]["feedback_ids"], r["lineage"]["reviewer_ids"]]
                                               for r in _rows(path)] for path in sorted(folder.glob("*.jsonl"))}


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _contents(value: Any) -> Iterator[str]:
    """Every message content in a row (its lineage holds none)."""
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            yield value["content"]
        for key, v in value.items():
            if key != "lineage":
                yield from _contents(v)
    elif isinstance(value, list):
        for v in value:
            yield from _contents(v)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
