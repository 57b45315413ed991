"""`hitl demo`: the whole loop on a fresh store, driven through the real HTTP API, with a measured result.

Stages: start server → end users ask → reviewers review → baseline (greedy answers of the champion) →
dataset build → retrain (LoRA SFT) → gates → promote → ask again → report. The server is a real
`python -m hitl serve` subprocess on SQLite in its own data dir; the demo only holds HTTP clients.
"""

import json
import math
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from demo import scenario
from demo.scenario import EndUser, Item, is_correct

console = Console()
FINISHED = {"succeeded", "failed", "skipped", "rejected", "promoted"}


@dataclass
class Profile:
    """How big the scenario is. `quick` keeps every stage but shrinks data, training and gates."""

    items: int
    everyday: int             # questions the base model answers well, asked too: reviewers approve them
    paraphrases: int          # per corrected question, asked only after training (never reviewed)
    general: int              # forgetting check: general questions, not chosen by what the base model answers
    compare_budget: int       # candidate generations are slow on CPU: cap the comparisons
    max_tokens: int
    retrain: dict[str, Any]
    gate_policy: dict[str, Any] = field(default_factory=dict)


def _retrain_config(epochs: float, lr: float, batch: int, replay: float, eval_fraction: float,
                    anchor_weight: float, general_anchors: int) -> dict:
    return {
        "methods": ["sft"],
        "sft": {"learning_rate": lr, "num_train_epochs": epochs, "effective_batch_size": batch,
                "per_device_train_batch_size": batch, "min_rows": 1, "max_length": 256, "warmup_ratio": 0.05,
                "lr_scheduler_type": "linear",
                # the eval split holds *other* facts than the train split: its best-loss checkpoint can come
                # before the corrections are learned, so the last step becomes the candidate
                "keep": "last", "anchor_weight": anchor_weight},
        # end users' other replies and general-pool rows hold the candidate to the champion (anchors)
        "snapshot_options": {"replay_fraction": replay, "eval_fraction": eval_fraction, "anchors": 256,
                             "anchor_general": general_anchors},
        "save_steps": 10_000, "logging_steps": 1,
    }


FULL = Profile(items=32, everyday=40, paraphrases=2, general=60, compare_budget=4, max_tokens=48,
               retrain=_retrain_config(epochs=6, lr=1.5e-3, batch=8, replay=0.0, eval_fraction=0.25,
                                       anchor_weight=1.0, general_anchors=170),
               gate_policy={"forgetting": {"answers": 64, "max_new_tokens": 48},
                            "evaluators": ["heldout", "preference", "forgetting", "golden"]})
QUICK = Profile(items=8, everyday=8, paraphrases=1, general=8, compare_budget=1, max_tokens=32,
                # anchors are built and checked but not trained on, for the 3-minute budget: the KL term
                # took quick's retrain stage from 100 s to 180 s (2026-11-25); the full profile uses them
                retrain=_retrain_config(epochs=8, lr=1.5e-3, batch=8, replay=0.0, eval_fraction=0.3,
                                        anchor_weight=0.0, general_anchors=16),
                gate_policy={"forgetting": {"max_examples": 48, "answers": 12, "max_new_tokens": 32},
                             "evaluators": ["heldout", "preference", "forgetting", "golden"],
                             "heldout": {"max_examples": 64}, "preference": {"max_examples": 64}})


# ------------------------------------------------------------------------------------------- plumbing


class Stages:
    """Times each stage and shows a progress bar for it."""

    def __init__(self, progress: Progress):
        self.progress, self.times = progress, {}

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        task = self.progress.add_task(name, total=total)
        started = time.monotonic()

        def advance(n: int = 1, **kw) -> None:
            self.progress.update(task, advance=n, **kw)

        try:
            yield advance
        finally:
            self.times[name] = round(time.monotonic() - started, 1)
            done = self.progress.tasks[task].total or 1
            self.progress.update(task, completed=done, total=done,
                                 description=f"{name} [dim]({self.times[name]:.0f}s)[/]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_base_model() -> str | None:
    """The operator's converted base model, if there is one (so the demo does not convert it again)."""
    from core.settings import get_settings
    from service.model_init import is_checkpoint

    path = get_settings().base_model_path
    return str(path.resolve()) if is_checkpoint(path) else None


class Server:
    """`python -m hitl serve` in a subprocess on its own data dir and SQLite file."""

    def __init__(self, data_dir: Path, base_model: str | None, port: int, extra_env: dict[str, str]):
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_key = "hitl-demo-" + secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
        env.update({"HITL_DATA_DIR": str(data_dir), "HITL_DATABASE_URL": f"sqlite:///{data_dir / 'hitl.db'}",
                    "HITL_ADMIN_KEY": self.admin_key, "HITL_PORT": str(port), "HITL_HOST": "127.0.0.1",
                    "HITL_SCHEDULER_ENABLED": "false", **extra_env})
        if base_model:
            env["HITL_BASE_MODEL"] = base_model
        self.env = env
        self.log_path = data_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 600) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "hitl", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hitl serve exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"hitl serve not ready after {timeout_s}s; see {self.log_path}")

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key or self.admin_key}"},
                            timeout=600)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


USER_IDS: dict[str, str] = {}  # user id -> demo name, to label the agreement report


def create_key(server: Server, admin: httpx.Client, name: str, role: str) -> str:
    """A user through the admin API; falls back to `hitl users create` (same store) when that route is absent."""
    resp = admin.post("/ui/api/users", json={"name": name, "role": role})
    if resp.status_code == 201:
        USER_IDS[str(resp.json()["id"])] = name
        return resp.json()["key"]
    out = subprocess.run([sys.executable, "-m", "hitl", "users", "create", "--role", role, "--name", name],
                         env=server.env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def ask_all(client: httpx.Client, questions: list[tuple[str, str | None]], max_tokens: int,
            advance: Callable[..., None], temperature: float | None = None) -> list[dict]:
    """Ask concurrently (the server batches them); keeps the order of `questions`."""
    def one(pair: tuple[str, str | None]) -> dict:
        answer = scenario.chat(client, pair[0], user=pair[1], temperature=temperature, max_tokens=max_tokens)
        advance()
        return answer

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, questions))


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


# ------------------------------------------------------------------------------------------- the loop


def thread_env() -> dict[str, str]:
    """One torch thread per process on a machine with at most 2 cores or whose load exceeds its cores:
    there, two OpenMP threads per process ran several times slower than one (measured 18 s vs 3.6 s for
    one 38-token SmolLM2 prefill at load 9 on 2 cores)."""
    cores = os.cpu_count() or 1
    if cores > 2 and os.getloadavg()[0] <= cores:
        return {}
    return {"HITL_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def select(profile: Profile, seed: int) -> tuple[list[Item], list[Item], list[Item]]:
    """(corpus questions to correct, everyday questions users also ask, the general set to measure)."""
    rng = random.Random(seed)

    def pick(pool: list[Item], n: int) -> list[Item]:
        return sorted(rng.sample(pool, min(n, len(pool))), key=lambda i: i.id)

    return (pick(scenario.load_items(), profile.items), pick(scenario.load_everyday(), profile.everyday),
            pick(scenario.load_general(), profile.general))


def measure(client: httpx.Client, items: list[Item], general: list[Item], paraphrases: int, max_tokens: int,
            advance: Callable[..., None]) -> dict[str, dict[str, dict]]:
    """Greedy answers of the serving model: every corpus question, its paraphrases, the general set."""
    asks: list[tuple[str, str, str]] = []  # (set, item id, prompt)
    asks += [("question", i.id, i.question) for i in items]
    asks += [("paraphrase", f"{i.id}#{k}", p) for i in items for k, p in enumerate(i.paraphrases[:paraphrases])]
    asks += [("general", g.id, g.question) for g in general]
    answers = ask_all(client, [(a[2], "demo-eval") for a in asks], max_tokens, advance, temperature=0.0)
    keys = {i.id: i.keys for i in items} | {g.id: g.keys for g in general}
    out: dict[str, dict[str, dict]] = {"question": {}, "paraphrase": {}, "general": {}}
    for (kind, ident, prompt), answer in zip(asks, answers):
        out[kind][ident] = {"prompt": prompt, "text": answer["text"], "version": answer["version"],
                            "correct": is_correct(answer["text"], keys[ident.split("#")[0]])}
    return out


def snapshot_membership(snapshot_path: str | None, items: list[Item]) -> dict[str, str]:
    """Which corpus questions entered the snapshot's SFT split as corrections: {item id: train|eval}."""
    by_question = {i.question.strip(): i.id for i in items}
    found: dict[str, str] = {}
    if not snapshot_path:
        return found
    for split in ("train", "eval"):
        path = Path(snapshot_path) / f"sft.{split}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            lineage = row.get("lineage") or {}
            if lineage.get("source") not in (None, "feedback"):
                continue
            if not any(str(f).startswith("correction") for f in lineage.get("feedback_ids", [])):
                continue
            user = next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), "")
            if user.strip() in by_question:
                found[by_question[user.strip()]] = split
    return found


def anchor_check(snapshot_path: str | None, questions: list[str]) -> dict[str, Any]:
    """The snapshot's anchor rows, and which of `questions` (never asked by end users) are among them: none
    may be, or the forgetting measurement would measure rows the candidate was held to."""
    path = Path(snapshot_path or "") / "sft.anchor.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    asked = {m["content"].strip() for r in rows for m in r["messages"] if m["role"] == "user"}
    return {"rows": len(rows), "measured_questions": sorted(q for q in questions if q.strip() in asked)}


def run_loop(profile: Profile, *, data_dir: Path, base_model: str | None, seed: int, port: int,
             progress: Progress, stages: Stages, measure_rejected: bool = True) -> dict[str, Any]:
    items, everyday, general = select(profile, seed)
    answer_key = {i.question.strip(): i for i in items + everyday}
    results: dict[str, Any] = {"profile": asdict(profile), "data_dir": str(data_dir), "seed": seed,
                               "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    # two reviews per item (agreement); every reply queued for review (a small chatbot's operator reviews
    # all traffic); short default replies (candidates for comparisons use it)
    extra_env = {"HITL_REVIEW_K": "2", "HITL_REVIEW_CALIBRATION_RATE": "1",
                 "HITL_MAX_TOKENS": str(2 * profile.max_tokens), **thread_env()}
    results["server_env"] = dict(extra_env)
    if profile.gate_policy:
        policy = data_dir / "gate-policy.json"  # JSON is YAML
        data_dir.mkdir(parents=True, exist_ok=True)
        policy.write_text(json.dumps(profile.gate_policy))
        extra_env["HITL_GATE_POLICY"] = str(policy)
    server = Server(data_dir, base_model, port, extra_env)
    try:
        with stages.stage("start server"):
            server.start()
            admin = server.client()
            service_key = create_key(server, admin, "demo-frontend", "service")
            keys = {name: create_key(server, admin, name, "reviewer") for name in scenario.REVIEWER_NAMES}
            front = server.client(service_key)
            results["base_version"] = admin.get("/readyz").json().get("model_version")

        traffic = items + everyday
        with stages.stage("end users ask", total=len(traffic)) as advance:
            users = [EndUser(f"user-{n:02d}", random.Random(seed * 100 + n)) for n in range(len(traffic))]
            # end users get the server's longer default: a reply cut off by max_tokens is never trained on
            asked = ask_all(front, [(i.question, users[k].name) for k, i in enumerate(traffic)],
                            2 * profile.max_tokens, advance)
            thumbs = []
            for k, (item, answer) in enumerate(zip(traffic, asked)):
                value = users[k].thumbs(front, answer["message_id"], is_correct(answer["text"], item.keys))
                thumbs.append(value)
            results["asked"] = [{"item": i.id, "question": i.question, "text": a["text"], "thumbs": t,
                                 "correct": is_correct(a["text"], i.keys), "message_id": a["message_id"]}
                                for i, a, t in zip(traffic, asked, thumbs)]

        with stages.stage("reviews", total=None) as advance:
            reviewers = scenario.make_reviewers(keys, seed, compare_rate=0.3)
            clients = {r.name: server.client(r.key) for r in reviewers}
            budget = [profile.compare_budget]
            active = list(reviewers)
            while active:
                for reviewer in list(active):
                    if reviewer.review_one(clients[reviewer.name], answer_key, budget):
                        advance()
                    else:
                        active.remove(reviewer)
            results["reviews"] = {r.name: r.log for r in reviewers}
            results["user_names"] = dict(USER_IDS)
            agreement = admin.get("/api/review/agreement")
            results["agreement"] = agreement.json() if agreement.status_code == 200 else None
            stats = admin.get("/api/review/stats")
            results["review_stats"] = stats.json() if stats.status_code == 200 else None

        # the snapshot reads the store as it is now: the measurements below are served replies too, and the
        # questions they ask must never become training rows or anchors
        cutoff = datetime.now(timezone.utc).isoformat()
        options = {**profile.retrain["snapshot_options"], "as_of": cutoff}
        retrain = {**profile.retrain, "snapshot_options": options}
        n_measure = len(items) * (1 + profile.paraphrases) + len(general)
        with stages.stage("baseline answers", total=n_measure) as advance:
            results["before"] = measure(admin_chat(server, service_key), items, general, profile.paraphrases,
                                        profile.max_tokens, advance)

        with stages.stage("dataset build"):
            resp = admin.post("/api/datasets", json=options)
            if resp.status_code in (200, 201):
                results["dataset"] = resp.json()
            else:
                results["dataset"] = {"note": f"POST /api/datasets answered {resp.status_code}; "
                                              "the retrain run builds the snapshot itself"}

        with stages.stage("retrain (LoRA SFT)", total=None) as advance:
            resp = admin.post("/api/retrain/runs", json={"config": retrain})
            resp.raise_for_status()
            run_id = resp.json()["id"]
            run, seen = wait_run(admin, run_id, advance, until=lambda r: bool(r.get("candidate_version"))
                                 or r["status"] in FINISHED)
        with stages.stage("gates"):
            run, _ = wait_run(admin, run_id, lambda *a, **k: None, until=lambda r: r["status"] in FINISHED)
            results["run"] = run
        with stages.stage("promote"):
            candidate = run.get("candidate_version")
            results["promoted"] = run["status"] == "promoted"
            results["forced"] = False
            if candidate and not results["promoted"] and measure_rejected:
                # the gate said no: promote by hand (admin API, recorded with its reason) only to measure
                # what the candidate learned, and roll back right after
                resp = admin.post(f"/api/models/{candidate}/promote",
                                  json={"reason": "hitl demo: measure a gate-rejected candidate", "force": True})
                results["forced"] = resp.status_code == 200
                results["force_response"] = resp.json() if resp.headers.get("content-type", "").startswith(
                    "application/json") else resp.text
            if candidate and (results["promoted"] or results["forced"]):
                results["served_after"] = wait_champion(admin, candidate)
            else:
                results["served_after"] = admin.get("/readyz").json().get("model_version")
            models = admin.get("/api/models")
            results["models"] = models.json() if models.status_code == 200 else None

        with stages.stage("ask again", total=n_measure) as advance:
            results["after"] = measure(admin_chat(server, service_key), items, general, profile.paraphrases,
                                       profile.max_tokens, advance)
        if results["forced"]:
            with stages.stage("rollback"):
                resp = admin.post("/api/models/rollback", json={"reason": "hitl demo: end of the measurement"})
                results["rollback"] = resp.json() if resp.status_code == 200 else {"status": resp.status_code}
                results["served_final"] = wait_champion(admin, results.get("base_version") or "")
        snapshot = (run.get("plan") or {}).get("snapshot_path")
        results["membership"] = snapshot_membership(snapshot, items)
        results["anchors"] = anchor_check(snapshot, [g.question for g in general]
                                          + [p for i in items for p in i.paraphrases[:profile.paraphrases]])
    finally:
        server.stop()
    results["items"] = [asdict(i) for i in items]
    results["everyday"] = [asdict(i) for i in everyday]
    results["general"] = [asdict(g) for g in general]
    return results


def admin_chat(server: Server, service_key: str) -> httpx.Client:
    return server.client(service_key)


def wait_run(admin: httpx.Client, run_id: int, advance: Callable[..., None], until: Callable[[dict], bool],
             timeout_s: float = 3600) -> tuple[dict, int]:
    """Poll the run; the bar follows its training steps."""
    deadline, seen = time.monotonic() + timeout_s, 0
    while True:
        run = admin.get(f"/api/retrain/runs/{run_id}").json()
        steps = [s for s in ((run.get("metrics") or {}).get("steps") or []) if "loss" in s]
        if steps:
            last = steps[-1]
            total = last.get("max_steps") or None
            advance(0, total=total, completed=last.get("step", 0),
                    description=f"retrain (LoRA SFT) loss {last['loss']:.3f}")
            seen = last.get("step", 0)
        if until(run):
            return run, seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"retrain run {run_id} did not finish in {timeout_s}s")
        time.sleep(1.0)


def wait_champion(admin: httpx.Client, version: str, timeout_s: float = 300) -> str | None:
    """Until serving has hot-swapped to `version` (it follows the champion alias)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = admin.get("/readyz").json().get("model_version")
        if served == version:
            return served
        time.sleep(1.0)
    return None


# ------------------------------------------------------------------------------------------- summary


TARGETS = {"corrected_train": 0.80, "paraphrases": 0.30, "forgetting_loss_increase": 0.05}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The before/after figures of the report (shares of answers matching the corpus answer)."""
    before, after, member = results["before"], results["after"], results["membership"]
    corrected_any = {r["item"] for log in results["reviews"].values() for r in log if r.get("correction")}

    def acc(kind: str, ids: list[str]) -> dict:
        b = [before[kind][i]["correct"] for i in ids if i in before[kind]]
        a = [after[kind][i]["correct"] for i in ids if i in after[kind]]
        return {"n": len(a), "before": share(b), "after": share(a)}

    train_ids = sorted(i for i, s in member.items() if s == "train")
    eval_ids = sorted(i for i, s in member.items() if s == "eval")
    uncorrected = sorted(i["id"] for i in results["items"] if i["id"] not in corrected_any)
    para = lambda ids: [k for k in before["paraphrase"] if k.split("#")[0] in ids]  # noqa: E731
    rows = {
        "corrected_train": acc("question", train_ids),
        "paraphrases": acc("paraphrase", para(set(train_ids))),
        "corrected_eval": acc("question", eval_ids),
        "uncorrected": acc("question", uncorrected),
        "general": acc("general", sorted(before["general"])),
    }
    gate = (results.get("run") or {}).get("gate") or {}
    raw = gate.get("results") or {}
    gate_results = raw if isinstance(raw, dict) else {r.get("name"): r for r in raw if isinstance(r, dict)}
    heldout, forgetting = gate_results.get("heldout", {}), gate_results.get("forgetting", {})
    figures = {
        "heldout_loss": {"champion": heldout.get("champion"), "candidate": heldout.get("candidate"),
                         "value": heldout.get("value"), "metric": heldout.get("metric")},
        "forgetting": {"champion": forgetting.get("champion"), "candidate": forgetting.get("candidate"),
                       "value": forgetting.get("value"), "metric": forgetting.get("metric"),
                       "note": forgetting.get("note")},
    }
    fc, fk = forgetting.get("champion"), forgetting.get("candidate")
    loss_increase = (fk - fc) / fc if isinstance(fc, int | float) and isinstance(fk, int | float) and fc else None
    targets = {
        "corrected_train": _verdict(rows["corrected_train"]["after"], TARGETS["corrected_train"], at_least=True),
        "paraphrases": _verdict(rows["paraphrases"]["after"], TARGETS["paraphrases"], at_least=True),
        "forgetting_loss_increase": _verdict(loss_increase, TARGETS["forgetting_loss_increase"], at_least=False),
        "general_answer_drop": _verdict(_drop(rows["general"]), TARGETS["forgetting_loss_increase"], at_least=False),
    }
    flips = {i: (before["general"][i]["correct"], after["general"][i]["correct"]) for i in sorted(before["general"])
             if i in after["general"]}
    churn = {"lost": [i for i, (b, a) in flips.items() if b and not a],
             "gained": [i for i, (b, a) in flips.items() if a and not b]}
    return {"accuracy": rows, "gate_figures": figures, "forgetting_loss_increase": loss_increase,
            "general_churn": churn,
            "anchors": results.get("anchors"),
            "targets": targets, "promoted": results.get("promoted"), "forced": results.get("forced"),
            "run_status": (results.get("run") or {}).get("status"),
            "gate_reasons": gate.get("reasons"), "corrected_items": sorted(corrected_any)}


def _drop(row: dict) -> float | None:
    """Relative net drop of the general set's correct answers, (before - after) / before (positive = forgot)."""
    return None if not row["before"] or row["after"] is None else (row["before"] - row["after"]) / row["before"]


def _verdict(value: float | None, target: float, at_least: bool) -> dict:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"value": value, "target": target, "met": met}


def print_summary(summary: dict[str, Any], times: dict[str, float], report: Path) -> None:
    table = Table(title="hitl demo: before → after (greedy answers containing the corpus answer)")
    for col in ("set", "n", "before", "after"):
        table.add_column(col, justify="right" if col != "set" else "left")
    fmt = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
    labels = {"corrected_train": "corrected prompts (train split)", "paraphrases": "their paraphrases (unseen)",
              "corrected_eval": "corrected prompts (eval split)", "uncorrected": "asked, not corrected",
              "general": "general set (not picked by answers)"}
    for key, row in summary["accuracy"].items():
        table.add_row(labels[key], str(row["n"]), fmt(row["before"]), fmt(row["after"]))
    console.print(table)
    churn = summary["general_churn"]
    console.print(f"general set: the candidate lost {len(churn['lost'])} answers the base model had right and "
                  f"gained {len(churn['gained'])} it had wrong")
    figures = summary["gate_figures"]
    console.print(f"held-out loss (gate): champion {figures['heldout_loss']['champion']} → candidate "
                  f"{figures['heldout_loss']['candidate']}")
    inc = summary["forgetting_loss_increase"]
    console.print(f"forgetting-set loss change (gate): {('–' if inc is None else f'{inc:+.1%}')}")
    if figures["forgetting"].get("note"):
        console.print(f"forgetting-set {figures['forgetting']['note']} (gate)")
    anchors = summary.get("anchors") or {}
    console.print(f"anchor rows (served replies the candidate was held to): {anchors.get('rows', 0)}; measured "
                  f"questions among them: {len(anchors.get('measured_questions', []))}")
    for name, verdict in summary["targets"].items():
        mark = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "[yellow]not measured[/]"}[verdict["met"]]
        value = "–" if verdict["value"] is None else f"{verdict['value']:.1%}"
        console.print(f"target {name}: {value} vs {verdict['target']:.0%} → {mark}")
    console.print(f"run status: {summary['run_status']}; promoted: {summary['promoted']}"
                  + (f"; gate reasons: {summary['gate_reasons']}" if summary.get("gate_reasons") else ""))
    console.print("time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
                  + f" (total {sum(times.values()):.0f}s)")
    console.print(f"report: {report}")


def main(quick: bool = False, base_model: str | None = None, data_dir: Path | None = None, seed: int = 7,
         port: int | None = None, epochs: float | None = None, learning_rate: float | None = None,
         items: int | None = None, anchor_weight: float | None = None) -> Path:
    """Run the demo; returns the path of the HTML report (its JSON lies beside it)."""
    profile = QUICK if quick else FULL
    profile = Profile(**{**asdict(profile)})
    if items:
        profile.items = items
    if epochs:
        profile.retrain["sft"]["num_train_epochs"] = epochs
    if learning_rate:
        profile.retrain["sft"]["learning_rate"] = learning_rate
    if anchor_weight is not None:
        profile.retrain["sft"]["anchor_weight"] = anchor_weight
    if data_dir is None:
        from core.settings import get_settings

        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        data_dir = get_settings().data_dir / "demo" / stamp
    data_dir = Path(data_dir).resolve()
    base_model = base_model or _default_base_model()
    console.print(f"[bold]hitl demo[/] ({'quick' if quick else 'full'}): data in {data_dir}, "
                  f"base model {base_model or 'SmolLM2-135M-Instruct (converted on first use)'}")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    stages = Stages(progress)
    with progress:
        results = run_loop(profile, data_dir=data_dir, base_model=base_model, seed=seed,
                           port=port or _free_port(), progress=progress, stages=stages)
        (data_dir / "demo-results.json").write_text(json.dumps(results, indent=1, default=str))
        with stages.stage("report"):
            from demo.report import write_report

            results["times"] = dict(stages.times)
            results["summary"] = summarize(results)
            results["command"] = " ".join(["hitl demo", *(["--quick"] if quick else [])])
            report = write_report(results, data_dir)
    results["times"] = dict(stages.times)
    (data_dir / "demo-results.json").write_text(json.dumps(results, indent=1, default=str))
    print_summary(results["summary"], results["times"], report)
    return report


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
