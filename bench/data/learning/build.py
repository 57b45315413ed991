"""Merge `raw/<corpus>.jsonl` (extract.py) with `curation.py` into `<corpus>.jsonl`, the harness's data.

    python bench/data/learning/build.py

Each output row: id, source (package, version, section), question (the FAQ heading, or the curated
self-contained wording), faq_question (the heading as written), correction (the reviewer's reply), keys,
paraphrases. Fails when a key phrase does not occur in the correction or does occur in the question.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

from curation import C  # noqa: E402

from demo.scenario import normalize  # noqa: E402

PACKAGES = {"debian": ("debian-faq", "11.1"), "python": ("python3.11-doc", "3.11.2-6+deb12u9"),
            "zsh": ("zsh-common", "5.9-4"), "sqlite": ("sqlite3-doc", "3.40.1-2+deb12u2")}


def main() -> None:
    errors: list[str] = []
    for name, (package, version) in PACKAGES.items():
        out = []
        for line in (HERE / "raw" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            cur = C[row["id"]]
            question = cur.get("q", row["question"])
            for key in cur["keys"]:
                if normalize(key) not in normalize(row["correction"]):
                    errors.append(f"{row['id']}: key {key!r} not in the correction")
                if normalize(key) in normalize(question):
                    errors.append(f"{row['id']}: key {key!r} is in the question")
            out.append({"id": row["id"], "source": {"package": package, "version": version,
                                                    "section": row["section"]},
                        "question": question, "faq_question": row["question"], "correction": row["correction"],
                        "keys": cur["keys"], "paraphrases": cur["para"]})
        with (HERE / f"{name}.jsonl").open("w") as f:
            for r in out:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(out)} rows")
    if errors:
        sys.exit("\n".join(errors))


if __name__ == "__main__":
    main()
