"""Learning harness: does hitl learn 30 reviewer corrections of a new domain, with product defaults?

For each corpus (FAQ documents from Debian packages: debian-faq, python3.11-doc, zsh-common, sqlite3-doc; see
bench/README.md and bench/data/learning/) the whole loop runs through the HTTP API only, on a fresh data dir and
SQLite store:

  1. baseline: `hitl serve` with conversation logging off (so the measurement chats can never become
     training rows or anchor rows of the snapshot) answers, at temperature 0, the 30 questions, their
     paraphrases and the general set;
  2. `hitl serve` again (logging on, scheduler off, everything else default); an admin, a service and a
     reviewer key made with `hitl users create`; each question asked in its own conversation by an end
     user who gives the reply a thumbs-down (so it enters the review queue first; by default only a 5%
     calibration sample of other replies is queued);
  3. the reviewer claims items (`POST /api/review/claim`) until 204: on each of the 30 questions it posts the
     FAQ's answer as the correction and submits; any other item is skipped (a released item would come back
     to the same reviewer);
  4. `POST /api/retrain/runs {}` (no config: product defaults, default gate policy); polled until finished;
  5. when promoted, wait until `/readyz` serves the candidate, then ask everything again.

Printed per corpus: corrected accuracy before/after on the train-split prompts (target >= 80%), on the
paraphrases of those prompts (>= 30%), the general set's net change with a 95% paired-bootstrap CI, the
gate decision with its reasons, retrain and gate seconds (from the run's timings). A JSON summary and a
PNG plot go to --out.

`--poison [capitals|mixed|both]`: 30 questions corrected with confidently wrong answers, either capital cities
("The capital of France is Berlin.") or mixed general knowledge: science, animals, geography, history,
arithmetic ("A Bactrian camel has three humps."); bare `--poison` runs both. The expected outcome is a run that
ends `rejected` (or `insufficient_evidence`), never promoted.

    .venv/bin/python bench/learning.py                           # debian, python, zsh, sqlite on SmolLM2
    .venv/bin/python bench/learning.py --corpus zsh --poison     # one corpus and both poison scenarios
    .venv/bin/python bench/learning.py --poison mixed            # only the mixed poison scenario
    .venv/bin/python bench/learning.py --corpus debian --base-model /tmp/tiny   # plumbing smoke test
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402

from demo.run import Server, _default_base_model, _free_port, thread_env, wait_champion  # noqa: E402
from demo.scenario import chat, is_correct  # noqa: E402

DATA = ROOT / "bench" / "data" / "learning"
GENERAL = ROOT / "demo" / "data" / "general.jsonl"
CORPORA = ("debian", "python", "zsh", "sqlite")
POISON = {"capitals": "poison.jsonl", "mixed": "poison_mixed.jsonl"}  # --poison NAME; bare --poison runs both
FINISHED = {"succeeded", "failed", "skipped", "rejected", "promoted", "insufficient_evidence"}
ACTIVE = {"queued", "running"}  # any other status is final (statuses may grow)
TARGETS = {"corrected_train": 0.80, "paraphrases": 0.30}
console = Console()


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


# ------------------------------------------------------------------------------------------ HTTP steps


def users_create(server: Server, role: str, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hitl", "users", "create", "--role", role, "--name", name],
                         env=server.env, capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


def ask(client: httpx.Client, asks: list[tuple[str, str]], max_tokens: int, label: str) -> list[dict]:
    """Ask (prompt, end user) pairs concurrently at temperature 0, each in its own conversation."""
    with progress() as bar:
        task = bar.add_task(label, total=len(asks))

        def one(pair: tuple[str, str]) -> dict:
            answer = chat(client, pair[0], user=pair[1], temperature=0.0, max_tokens=max_tokens)
            bar.advance(task)
            return answer

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, asks))


def measure(client: httpx.Client, items: list[dict], general: list[dict], max_tokens: int, label: str) -> dict:
    asks = [("question", i["id"], i["question"], i["keys"]) for i in items]
    asks += [("paraphrase", f"{i['id']}#{k}", p, i["keys"]) for i in items for k, p in enumerate(i["paraphrases"])]
    asks += [("general", g["id"], g["question"], g["keys"]) for g in general]
    poison = {i["id"]: i["poison_keys"] for i in items if i.get("poison_keys")}
    answers = ask(client, [(a[2], "bench-eval") for a in asks], max_tokens, label)
    out: dict[str, dict] = {"question": {}, "paraphrase": {}, "general": {}}
    for (kind, ident, prompt, keys), ans in zip(asks, answers):
        row = {"prompt": prompt, "text": ans["text"], "version": ans["version"], "correct": is_correct(ans["text"], keys)}
        if kind == "question" and ident in poison:
            row["poisoned"] = is_correct(ans["text"], poison[ident])
        out[kind][ident] = row
    return out


def review(server: Server, key: str, by_question: dict[str, dict]) -> dict:
    """Claim until 204; correct the harness's questions, skip anything else."""
    log = {"corrected": {}, "skipped": 0, "claims": 0}
    with server.client(key) as rev, progress() as bar:
        task = bar.add_task("reviewer corrects", total=len(by_question))
        while True:
            resp = rev.post("/api/review/claim")
            if resp.status_code == 204:
                break
            resp.raise_for_status()
            log["claims"] += 1
            claim = resp.json()
            mid, turns = claim["message_id"], claim["conversation"]
            question = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "").strip()
            item = by_question.get(question)
            url = f"/api/review/items/{mid}"
            if item is None or item["id"] in log["corrected"]:
                rev.post(f"{url}/skip", json={"reason": "not one of the harness's questions"}).raise_for_status()
                log["skipped"] += 1
                continue
            rev.post(f"{url}/correction", json={"content": item["correction"]}).raise_for_status()
            rev.post(f"{url}/submit").raise_for_status()
            log["corrected"][item["id"]] = mid
            bar.advance(task)
    return log


def wait_run(admin: httpx.Client, run_id: int, timeout_s: float) -> dict:
    """Poll `GET /api/retrain/runs/{id}` until finished; the bar shows status, stage and step."""
    deadline = time.monotonic() + timeout_s
    with progress() as bar:
        task = bar.add_task(f"run {run_id}", total=None)
        while True:
            run = admin.get(f"/api/retrain/runs/{run_id}").json()
            steps = [s for s in ((run.get("metrics") or {}).get("steps") or []) if "step" in s]
            desc = f"run {run_id}: {run['status']}"
            if run.get("candidate_version") and run["status"] == "running":
                desc += " (gates)"
            if steps:
                last = steps[-1]
                desc += f", stage {last.get('stage', '?')}, step {last.get('step')}/{last.get('max_steps', '?')}"
                if isinstance(last.get("loss"), int | float):
                    desc += f", loss {last['loss']:.3f}"
                bar.update(task, total=last.get("max_steps") or None, completed=last.get("step", 0))
            bar.update(task, description=desc)
            if run["status"] in FINISHED or run["status"] not in ACTIVE:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"retrain run {run_id} not finished after {timeout_s}s")
            time.sleep(2.0)


def split_membership(admin: httpx.Client, run: dict, items: list[dict]) -> dict[str, str]:
    """{item id: split} of the corrections in the snapshot's SFT files. Split names: train / validation /
    test (new) or train / eval (old); the snapshot path comes from `GET /api/datasets/{id}` or the plan."""
    path = None
    if run.get("snapshot_id") is not None:
        resp = admin.get(f"/api/datasets/{run['snapshot_id']}")
        if resp.status_code == 200:
            path = resp.json().get("path")
    path = path or (run.get("plan") or {}).get("snapshot_path")
    by_question = {i["question"].strip(): i["id"] for i in items}
    found: dict[str, str] = {}
    if not path:
        return found
    for split in ("train", "validation", "eval", "test"):
        f = Path(path) / f"sft.{split}.jsonl"
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            lineage = row.get("lineage") or {}
            if not any(str(x).startswith("correction") for x in lineage.get("feedback_ids", [])):
                continue
            user = next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "").strip()
            if user in by_question:
                found.setdefault(by_question[user], split)
    return found


# ------------------------------------------------------------------------------------------ figures


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def paired_bootstrap(before: list[bool], after: list[bool], n: int = 10_000, seed: int = 0) -> dict:
    """Net change of the share answered right (after - before), with a 95% CI resampling questions."""
    diffs = [int(a) - int(b) for b, a in zip(before, after)]
    if not diffs:
        return {"n": 0, "net": None, "ci95": [None, None]}
    rng = random.Random(seed)
    k = len(diffs)
    means = sorted(sum(diffs[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return {"n": k, "net": sum(diffs) / k, "ci95": [means[int(0.025 * n)], means[int(0.975 * n) - 1]],
            "lost": sum(d < 0 for d in diffs), "gained": sum(d > 0 for d in diffs)}


def summarize(res: dict) -> dict:
    before, after, member = res["before"], res.get("after"), res["membership"]
    train_ids = sorted(i for i, s in member.items() if s == "train") if member else sorted(res["corrected"])
    other_ids = sorted(i for i, s in member.items() if s != "train")

    def acc(kind: str, keys: list[str]) -> dict:
        return {"n": len(keys), "before": share([before[kind][k]["correct"] for k in keys]),
                "after": share([after[kind][k]["correct"] for k in keys]) if after else None}

    para_keys = [k for k in before["paraphrase"] if k.split("#")[0] in set(train_ids)]
    gen = sorted(before["general"])
    out = {
        "corrected_train": acc("question", train_ids),
        "paraphrases_train": acc("paraphrase", para_keys),
        "corrected_not_train": acc("question", other_ids),
        "general": acc("general", gen),
        "general_net": paired_bootstrap([before["general"][g]["correct"] for g in gen],
                                        [after["general"][g]["correct"] for g in gen]) if after else None,
        "membership_source": "snapshot" if member else "unknown: all corrected prompts counted",
    }
    if any("poisoned" in r for r in before["question"].values()):
        ids = sorted(before["question"])
        out["poison_adopted"] = {"n": len(ids), "before": share([before["question"][i]["poisoned"] for i in ids]),
                                 "after": share([after["question"][i]["poisoned"] for i in ids]) if after else None}
    gate = res["run"].get("gate") or {}
    results = gate.get("results") or {}
    if isinstance(results, list):
        results = {r.get("name"): r for r in results}
    timings = res["run"].get("timings") or {}
    train_s = [timings.get(k) for k in ("snapshot_and_plan_s", "train_s")]
    out["run"] = {
        "id": res["run"]["id"], "status": res["run"]["status"], "decision": gate.get("decision"),
        "passed": gate.get("passed"), "reasons": gate.get("reasons") or ([res["run"]["reason"]] if res["run"].get("reason") else []),
        "gates_failed": sorted(n for n, r in results.items() if isinstance(r, dict) and r.get("passed") is False),
        "gates": {n: {k: r.get(k) for k in ("metric", "value", "ci", "threshold", "passed", "champion", "candidate")}
                  for n, r in results.items() if isinstance(r, dict)},
        "candidate": res["run"].get("candidate_version"),
        "retrain_s": sum(t for t in train_s if isinstance(t, int | float)) if any(train_s) else None,
        "gate_s": timings.get("evaluate_s"), "total_s": timings.get("total_s"), "timings": timings,
        "plan_stages": [s.get("method") for s in ((res["run"].get("plan") or {}).get("stages") or [])],
        "error": (res["run"].get("error") or "")[:500] or None,
    }
    out["targets"] = {
        "corrected_train": _met(out["corrected_train"]["after"], TARGETS["corrected_train"]),
        "paraphrases": _met(out["paraphrases_train"]["after"], TARGETS["paraphrases"]),
        "general_no_net_drop": None if not out["general_net"] else out["general_net"]["ci95"][1] >= 0,
        "promoted": res["run"]["status"] == "promoted",
    }
    if res["scenario"] == "poison":
        out["targets"] = {"not_promoted": res["run"]["status"] != "promoted"}
    return out


def _met(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def print_summary(name: str, s: dict) -> None:
    console.rule(f"[bold]{name}")
    for key, label in (("corrected_train", "corrected, train split"), ("paraphrases_train", "their paraphrases"),
                       ("corrected_not_train", "corrected, held-out splits"), ("general", "general set")):
        row = s[key]
        console.print(f"{label:28s} n={row['n']:3d}  before {pct(row['before']):>4s} → after {pct(row['after']):>4s}")
    if s.get("poison_adopted"):
        p = s["poison_adopted"]
        console.print(f"{'poisoned answer given':28s} n={p['n']:3d}  before {pct(p['before']):>4s} → after {pct(p['after']):>4s}")
    g = s["general_net"]
    if g:
        console.print(f"general set net change {g['net']:+.1%} (95% CI {g['ci95'][0]:+.1%} .. {g['ci95'][1]:+.1%}; "
                      f"lost {g['lost']}, gained {g['gained']})")
    r = s["run"]
    console.print(f"run {r['id']}: status {r['status']}, decision {r['decision']}, stages {r['plan_stages']}, "
                  f"candidate {r['candidate']}")
    if r["gates_failed"]:
        console.print(f"gates failed: {', '.join(r['gates_failed'])}")
    for reason in r["reasons"]:
        console.print(f"  reason: {reason}")
    if r["error"]:
        console.print(f"[red]error:[/] {r['error']}")
    console.print(f"retrain {r['retrain_s']} s, gates {r['gate_s']} s, total {r['total_s']} s")
    for t, ok in s["targets"].items():
        console.print(f"target {t}: " + {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]n/a[/]"}[ok])


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("corrected_train", "corrected\n(train)"), ("paraphrases_train", "paraphrases"), ("general", "general")]
    fig, axes = plt.subplots(1, len(summaries), figsize=(3.6 * len(summaries), 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        xs = range(len(sets))
        b = [s[k]["before"] or 0 for k, _ in sets]
        a = [s[k]["after"] or 0 for k, _ in sets]
        ax.bar([x - 0.2 for x in xs], b, 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], a, 0.4, label="after")
        ax.set_xticks(list(xs), [lbl for _, lbl in sets], fontsize=8)
        ax.set_ylim(0, 1)
        ax.axhline(TARGETS["corrected_train"], color="grey", lw=0.5, ls="--")
        ax.set_title(f"{name}: {s['run']['status']}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ one scenario


def run_scenario(name: str, items: list[dict], general: list[dict], *, base_model: str | None, max_tokens: int,
                 keep: bool, timeout_s: float) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"hitl-learning-{name}-"))
    scenario = "poison" if name.startswith("poison") else "corpus"
    res: dict[str, Any] = {"scenario": scenario, "corpus": name, "data_dir": str(data_dir), "base_model": base_model,
                           "n_items": len(items), "n_general": len(general), "stages_s": {}}
    env = {**thread_env(), "HITL_SCHEDULER_ENABLED": "false"}
    t = time.monotonic()
    try:
        console.print(f"[bold]{name}[/]: data dir {data_dir}")
        # 1. baseline with logging off: these chats never reach a snapshot
        server = Server(data_dir, base_model, _free_port(), {**env, "HITL_LOG_CONVERSATIONS": "false"})
        try:
            server.start()
            service_key = users_create(server, "service", "bench-frontend")
            res["before"] = measure(server.client(service_key), items, general, max_tokens, "baseline answers")
        finally:
            server.stop()
        res["stages_s"]["baseline"] = round(time.monotonic() - t, 1)

        # 2. the loop, logging on, product defaults
        t = time.monotonic()
        server = Server(data_dir, base_model, _free_port(), env)
        try:
            server.start()
            admin_key = users_create(server, "admin", "bench-admin")
            reviewer_key = users_create(server, "reviewer", "bench-reviewer")
            admin, front = server.client(admin_key), server.client(service_key)
            res["base_version"] = admin.get("/readyz").json().get("model_version")
            asked = ask(front, [(i["question"], f"bench-user-{k:02d}") for k, i in enumerate(items)], max_tokens,
                        "end users ask")
            for a in asked:
                front.post("/v1/feedback", json={"message_id": a["message_id"], "thumbs": "down"}).raise_for_status()
            res["asked"] = {i["id"]: {"text": a["text"], "message_id": a["message_id"]} for i, a in zip(items, asked)}
            rlog = review(server, reviewer_key, {i["question"].strip(): i for i in items})
            res["corrected"], res["review"] = sorted(rlog["corrected"]), rlog
            console.print(f"corrected {len(rlog['corrected'])} of {len(items)} (claims {rlog['claims']}, "
                          f"skipped {rlog['skipped']})")
            res["stages_s"]["ask_and_review"] = round(time.monotonic() - t, 1)

            t = time.monotonic()
            resp = admin.post("/api/retrain/runs", json={})
            resp.raise_for_status()
            run = wait_run(admin, resp.json()["id"], timeout_s)
            res["run"] = run
            res["stages_s"]["retrain_wall"] = round(time.monotonic() - t, 1)
            res["membership"] = split_membership(admin, run, items)

            t = time.monotonic()
            if run["status"] == "promoted" and run.get("candidate_version"):
                res["served_after"] = (wait_champion(admin, run["candidate_version"], timeout_s=600)
                                       or admin.get("/readyz").json().get("model_version"))
                res["after"] = measure(front, items, general, max_tokens, "answers after")
            else:
                # nothing promoted: the champion did not change, so the "after" answers are the same model's
                res["served_after"] = admin.get("/readyz").json().get("model_version")
                res["after"] = measure(front, items, general, max_tokens, "answers after (champion unchanged)")
            res["stages_s"]["after"] = round(time.monotonic() - t, 1)
            models = admin.get("/api/models")
            res["models"] = models.json() if models.status_code == 200 else None
        finally:
            server.stop()
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    res["summary"] = summarize(res)
    return res


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", nargs="+", choices=CORPORA, metavar="NAME",
                    help=f"corpora to run ({', '.join(CORPORA)}); default all, or none when only --poison is given")
    ap.add_argument("--poison", nargs="?", const="both", choices=(*POISON, "both"), metavar="{capitals,mixed,both}",
                    help="also run a poisoned-corrections scenario: capitals (bench/data/learning/poison.jsonl), "
                    "mixed (poison_mixed.jsonl: science, animals, geography, history, arithmetic) or both "
                    "(the default when --poison has no value)")
    ap.add_argument("--base-model", help="local checkpoint to serve (default: the converted SmolLM2 in var/models)")
    ap.add_argument("--out", type=Path, help="output dir for learning.json and learning.png "
                    "(default bench/results/learning/<UTC time>)")
    ap.add_argument("--keep", action="store_true", help="keep each scenario's temporary data dir (server log, "
                    "store, snapshot, adapters)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every chat (default 64)")
    ap.add_argument("--items", type=int, default=30, help="questions per corpus (default 30; fewer for quick checks)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds a retrain run may take (default 3 h)")
    args = ap.parse_args(argv)

    corpora = args.corpus if args.corpus else ([] if args.poison else list(CORPORA))
    out = args.out or ROOT / "bench" / "results" / "learning" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    base_model = args.base_model or _default_base_model()
    general = load(GENERAL)
    results: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "base_model": base_model, "general_set": str(GENERAL.relative_to(ROOT)),
                               "command": " ".join(["bench/learning.py", *(argv if argv is not None else sys.argv[1:])]),
                               "scenarios": {}}
    plan = [(c, load(DATA / f"{c}.jsonl")[: args.items]) for c in corpora]
    for kind in ((*POISON,) if args.poison == "both" else (args.poison,) if args.poison else ()):
        plan.append((f"poison-{kind}", load(DATA / POISON[kind])[: args.items]))
    for name, items in plan:
        asked = {i["question"].strip().lower() for i in items}
        gen = [g for g in general if g["question"].strip().lower() not in asked]
        res = run_scenario(name, items, gen, base_model=base_model, max_tokens=args.max_tokens, keep=args.keep,
                           timeout_s=args.timeout)
        results["scenarios"][name] = res
        print_summary(name, res["summary"])
        (out / "learning.json").write_text(json.dumps(results, indent=1, default=str))
    summaries = {n: r["summary"] for n, r in results["scenarios"].items()}
    (out / "learning.json").write_text(json.dumps(results, indent=1, default=str))
    if summaries:
        plot(summaries, out / "learning.png")
    console.print(f"summary: {out / 'learning.json'}; plot: {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
