"""Privacy deletions reach the files: every existing snapshot loses the rows that mention a deleted
conversation, message or text (JSONL and Parquet rewritten, the manifest records the redaction), and
the paraphrase cache forgets their paraphrases. The app registers `erase` in `feedback.service.ERASERS`."""

import json
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
    ParaphraseCache(get_settings().data_dir / "datasets" / "paraphrase-cache.jsonl").forget(
        needles | removed_texts, removed_texts)


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
