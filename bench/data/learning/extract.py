"""Extract the learning harness's FAQ corpora from Debian packages into `raw/<corpus>.jsonl`.

Run once (needs the Debian archive; the harness itself never touches the network):

    python bench/data/learning/extract.py            # apt-get download + dpkg-deb -x into a temp dir
    python bench/data/learning/extract.py --from DIR # DIR holds the already extracted package trees

then `python bench/data/learning/build.py` merges `raw/*.jsonl` with the hand-written key phrases and
paraphrases (`curation/<corpus>.json`) into `<corpus>.jsonl`, the files the harness reads.

Rule ("the first 30 suitable entries", in document order):
  * the heading is a question (ends with "?");
  * the answer's first paragraph is prose (not a code block, list or quotation);
  * the correction is the answer's first sentence, plus its second when the first has fewer than 12 words,
    markup and parenthesised URLs removed; it has 6 to 60 words (else the entry is skipped).
"""

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = 30

CORPORA = {
    "debian": {"package": "debian-faq", "files": ["usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"]},
    "python": {"package": "python3.11-doc", "files": [
        f"usr/share/doc/python3.11/html/_sources/faq/{n}.rst.txt"
        for n in ("general", "programming", "design", "library", "extending", "windows", "gui", "installed")]},
    "zsh": {"package": "zsh-common", "files": ["usr/share/doc/zsh-common/FAQ.gz"]},
}


# Entries whose opening sentences do not answer the question (or whose question means nothing out of the
# FAQ's context); skipped by hand, with the reason.
SKIP = {
    ("debian", "1.1"): "'What is this FAQ?' is about the document itself",
    ("debian", "3.1"): "'The answer is a bit complicated.' answers nothing",
    ("debian", "3.1.9"): "'This question will not help you ...' answers nothing",
    ("debian", "3.1.13"): "refers to the previous answers ('What did you say I should install?')",
    ("zsh", "1.3"): "'Here are some things ...' introduces a list",
    ("zsh", "1.4"): "the first sentence is about autoconf, not the machines",
    ("zsh", "1.6"): "the first sentences name the FAQ's author, not where to get zsh",
    ("zsh", "2.6"): "restates the question",
    ("zsh", "3.4"): "'In the first case, you presumably ...' needs the rest of the answer",
    ("zsh", "3.22"): "restates the problem, not the answer",
    ("zsh", "3.23"): "version history, not the answer",
}


def read(path: Path) -> str:
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", "replace")
    return text.replace("\u00a0", " ").replace("\u201c", '"').replace("\u201d", '"')


# ------------------------------------------------------------------------------------------ parsers


def parse_debian(text: str) -> list[tuple[str, str, str]]:
    """(section number, question, answer text); headings start at column 0 ("3.1.2. Question?")."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("1.1. "))  # the TOC is indented
    out, i = [], start
    head = re.compile(r"^(\d+(?:\.\d+)+)\. (.*)")
    while i < len(lines):
        m = head.match(lines[i])
        if not m:
            i += 1
            continue
        num, q = m.group(1), m.group(2)
        i += 1
        while i < len(lines) and lines[i].strip() and not lines[i].startswith(" "):
            q += " " + lines[i].strip()
            i += 1
        body = []
        while i < len(lines) and not head.match(lines[i]):
            body.append(lines[i])
            i += 1
        out.append((num, q.strip(), "\n".join(body)))
    return out


def parse_rst(text: str) -> list[tuple[str, str, str]]:
    """Python FAQ: a question is a title underlined with '-' (sections use '=')."""
    lines = text.splitlines()
    out, cur, body = [], None, []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt) and len(nxt) >= len(line.rstrip()) - 1:
            if cur:
                out.append((cur[0], cur[1], "\n".join(body)))
            cur, body = (str(len(out) + 1), line.strip()), []
            continue
        if re.fullmatch(r"[-=]{3,}", line):
            continue
        if cur:
            if i + 1 < len(lines) and re.fullmatch(r"={3,}", nxt):  # a section title ends the answer
                out.append((cur[0], cur[1], "\n".join(body)))
                cur, body = None, []
                continue
            body.append(line)
    if cur:
        out.append((cur[0], cur[1], "\n".join(body)))
    return out


def parse_zsh(text: str) -> list[tuple[str, str, str]]:
    """Z-Shell FAQ: headings '3.2: In which startup file do I put...?' at column 0."""
    lines = text.splitlines()
    head = re.compile(r"^(\d+\.\d+): (.*)")
    out, cur, body = [], None, []
    for line in lines:
        m = head.match(line)
        if m:
            if cur:
                out.append((cur[0], cur[1], "\n".join(body)))
            cur, body = (m.group(1), m.group(2).strip()), []
        elif cur:
            if re.match(r"^Chapter \d+:", line) or line.startswith("---"):
                out.append((cur[0], cur[1], "\n".join(body)))
                cur, body = None, []
            else:
                body.append(line)
    if cur:
        out.append((cur[0], cur[1], "\n".join(body)))
    return out


# ------------------------------------------------------------------------------------------ cleaning


def clean_rst(s: str) -> str:
    s = re.sub(r":pep:`(\d+)`", r"PEP \1", s)
    s = re.sub(r":[a-z:]+:`~?([^`<]*?)\s*<[^>]*>`", r"\1", s)   # :ref:`text <target>`
    s = re.sub(r":[a-z:]+:`~?([^`]*)`", r"\1", s)              # :func:`name`
    s = re.sub(r"`([^`<]*?)\s*<[^>]*>`_+", r"\1", s)            # `text <url>`_
    s = re.sub(r"``([^`]*)``", r"\1", s)
    s = re.sub(r"`([^`]*)`_?", r"\1", s)
    s = re.sub(r"\*\*?([^*]+)\*\*?", r"\1", s)
    return s


def first_paragraph(body: str) -> str | None:
    paras = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
    if not paras:
        return None
    p = paras[0]
    if p.lstrip().startswith((".. ", "*", "o ", "-", ">", "$", "%", "%%", "```")) or p.rstrip().endswith("::"):
        return None
    if p.startswith("   ") and not p.startswith("    "):  # an rst block quote
        return None
    return " ".join(p.split())


SENT = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)(?<=[.!?])\s+(?=[A-Z`\"'(])")


def correction_of(paragraph: str) -> str | None:
    p = re.sub(r"\s*\((?:see )?https?://[^)]*\)", "", paragraph)     # Debian's "(https://...)" link targets
    p = p.replace("::", ":").strip()
    sentences = [s.strip() for s in SENT.split(p) if s.strip()]
    if not sentences:
        return None
    text = sentences[0]
    if len(text.split()) < 12 and len(sentences) > 1:
        text += " " + sentences[1]
    if not re.search(r"[.!?][\"')]?$", text) or text.endswith(("i.e.", "e.g.")) or text.startswith("("):
        return None   # cut off before a code example, or a parenthetical aside
    if re.search(r"\b[a-z]+-index\b|\^\[\d+\]", text):
        return None   # an unresolved cross-reference label or footnote mark
    n = len(text.split())
    return text if 6 <= n <= 60 else None


def extract(name: str, root: Path) -> list[dict]:
    spec = CORPORA[name]
    rows = []
    for rel in spec["files"]:
        text = read(root / rel)
        parsed = {"debian": parse_debian, "python": parse_rst, "zsh": parse_zsh}[name](text)
        for num, question, body in parsed:
            if name == "python":
                question, body = clean_rst(question), clean_rst(body)
            question = " ".join(question.split())
            if not question.endswith("?") or (name, num) in SKIP:
                continue
            para = first_paragraph(body)
            corr = correction_of(para) if para else None
            if not corr:
                continue
            section = f"{Path(rel).name.split('.')[0]} {num}" if name == "python" else num
            rows.append({"id": f"{name}-{len(rows):03d}", "section": section, "question": question,
                         "correction": corr})
            if len(rows) == N:
                return rows
    return rows


def download(dest: Path) -> None:
    for spec in CORPORA.values():
        subprocess.run(["apt-get", "download", spec["package"]], cwd=dest, check=True)
    for deb in dest.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / "root")], check=True)
        print(deb.name, file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, help="directory with the extracted package trees")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.src
        if root is None:
            download(Path(tmp))
            root = Path(tmp) / "root"
        (HERE / "raw").mkdir(exist_ok=True)
        for name in CORPORA:
            rows = extract(name, root)
            assert len(rows) == N, (name, len(rows))
            with (HERE / "raw" / f"{name}.jsonl").open("w") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            print(f"{name}: {len(rows)} entries", file=sys.stderr)


if __name__ == "__main__":
    main()
