"""The demo's self-contained HTML report: before/after table, target verdicts, plots (base64 PNG),
training curve, reviewer agreement, time per stage and every question with both answers."""

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

LABELS = {"corrected_train": "corrected prompts (train split)", "paraphrases": "paraphrases of them (never reviewed)",
          "corrected_eval": "corrected prompts (eval split, not trained on)", "uncorrected": "asked, not corrected",
          "general": "general set (not picked by the base model's answers)"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(results: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    rows = results["summary"]["accuracy"]
    keys = [k for k in rows if rows[k]["n"]]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [100 * (rows[k]["before"] or 0) for k in keys], 0.4, label="before", color="#999")
    ax.bar([i + 0.2 for i in x], [100 * (rows[k]["after"] or 0) for k in keys], 0.4, label="after", color="#2a7")
    ax.axhline(80, ls="--", lw=0.8, color="#2a7")
    ax.axhline(30, ls=":", lw=0.8, color="#555")
    ax.set_xticks(list(x), [LABELS[k].split(" (")[0] + f"\n(n={rows[k]['n']})" for k in keys], fontsize=7)
    ax.set_ylabel("% answered correctly")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    out["accuracy"] = _png(fig)

    steps = ((results.get("run") or {}).get("metrics") or {}).get("steps") or []
    train = [(s["step"], s["loss"]) for s in steps if "loss" in s]
    evals = [(s["step"], s["eval_loss"]) for s in steps if "eval_loss" in s]
    if train or evals:
        fig, ax = plt.subplots(figsize=(7.5, 3))
        if train:
            ax.plot(*zip(*train), label="train loss", color="#27a")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss (eval split)", color="#d62")
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
        out["training"] = _png(fig)

    times = results.get("times") or {}
    if times:
        fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(times) + 0.8))
        ax.barh(list(times)[::-1], list(times.values())[::-1], color="#57a")
        ax.set_xlabel("seconds")
        out["times"] = _png(fig)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def render(results: dict[str, Any]) -> str:
    s = results["summary"]
    plots = _plots(results)
    e = html.escape
    parts = ["<!doctype html><meta charset=utf-8><title>hitl demo report</title>",
             "<style>body{font:14px system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;"
             "vertical-align:top}th{background:#f4f4f4}.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;"
             "font-weight:600}.na{color:#a60}small{color:#666}td.t{max-width:330px;font-size:12px}</style>",
             "<h1>hitl demo: the loop, measured</h1>",
             f"<p><small>command <code>{e(results.get('command', ''))}</code> · started {e(results.get('started_at', ''))}"
             f" · data dir <code>{e(results.get('data_dir', ''))}</code> · base {e(str(results.get('base_version')))}"
             f" → served after {e(str(results.get('served_after')))}</small></p>",
             "<p>“Answered correctly” = the greedy reply (temperature 0) contains one of the corpus answer's key "
             "phrases as whole words, after lower-casing and removing accents and punctuation.</p>",
             "<h2>Before → after</h2><table><tr><th>set</th><th>n</th><th>before</th><th>after</th></tr>"]
    for key, row in s["accuracy"].items():
        parts.append(f"<tr><td>{e(LABELS[key])}</td><td>{row['n']}</td><td>{_pct(row['before'])}</td>"
                     f"<td>{_pct(row['after'])}</td></tr>")
    parts.append("</table>")
    churn = s["general_churn"]
    parts.append(f"<p>General set churn: the candidate lost {len(churn['lost'])} answers the base model had "
                 f"right and gained {len(churn['gained'])} it had wrong. The set is fixed, not picked by what "
                 "the base model answers: a set picked for being right can only get worse, since a small model's "
                 "weakly held answers flip both ways under any update.</p>")
    if "accuracy" in plots:
        parts.append(f"<img src='{plots['accuracy']}' alt='accuracy before and after'>")

    parts.append("<h2>Targets (PRODUCT.md §3 Improvement)</h2><table><tr><th>target</th><th>value</th>"
                 "<th>threshold</th><th>verdict</th></tr>")
    names = {"corrected_train": "corrected train prompts answered with the correction",
             "paraphrases": "paraphrases answered correctly",
             "forgetting_loss_increase": "loss increase on held-out general prompts (forgetting gate)",
             "general_answer_drop": "net drop in the general set's correct answers, relative (greedy answers)"}
    for key, v in s["targets"].items():
        verdict = {True: "<span class=ok>met</span>", False: "<span class=bad>NOT met</span>",
                   None: "<span class=na>not measured</span>"}[v["met"]]
        sign = "≥" if key in ("corrected_train", "paraphrases") else "≤"
        parts.append(f"<tr><td>{names[key]}</td><td>{_pct(v['value']) if v['value'] is not None else '–'}</td>"
                     f"<td>{sign} {v['target']:.0%}</td><td>{verdict}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p>{e(why(results))}</p>")

    run = results.get("run") or {}
    g = s["gate_figures"]
    parts.append("<h2>Retrain run and gates</h2><table>"
                 f"<tr><th>run</th><td>#{_fmt(run.get('id'))} · status <b>{_fmt(run.get('status'))}</b> · candidate "
                 f"{_fmt(run.get('candidate_version'))} · promoted by the gates {_fmt(results.get('promoted'))}"
                 f" · promoted by hand to measure {_fmt(results.get('forced'))}</td></tr>"
                 f"<tr><th>held-out loss (eval split)</th><td>champion {_fmt(g['heldout_loss']['champion'])} → "
                 f"candidate {_fmt(g['heldout_loss']['candidate'])} ({_fmt(g['heldout_loss']['metric'])} "
                 f"{_fmt(g['heldout_loss']['value'])})</td></tr>"
                 f"<tr><th>forgetting set loss</th><td>champion {_fmt(g['forgetting']['champion'])} → candidate "
                 f"{_fmt(g['forgetting']['candidate'])} ({_fmt(g['forgetting']['metric'])} "
                 f"{_fmt(g['forgetting']['value'])})</td></tr>"
                 f"<tr><th>forgetting set answers</th><td>{_fmt(g['forgetting'].get('note'))}</td></tr>"
                 f"<tr><th>anchor rows</th><td>{_fmt((s.get('anchors') or {}).get('rows'))} served replies the "
                 "candidate was held to (KL to the champion); measured questions among them: "
                 f"{_fmt(len((s.get('anchors') or {}).get('measured_questions', [])))}</td></tr>"
                 f"<tr><th>gate reasons</th><td>{_fmt(s.get('gate_reasons') or 'none')}</td></tr>"
                 f"<tr><th>plan</th><td><small>{e(json.dumps((run.get('plan') or {}).get('stages'), default=str))}"
                 "</small></td></tr>"
                 f"<tr><th>snapshot counts</th><td><small>{e(json.dumps((run.get('plan') or {}).get('counts'), default=str))}"
                 "</small></td></tr>"
                 f"<tr><th>error</th><td><small>{_fmt((run.get('error') or '')[-800:] or None)}</small></td></tr></table>")
    if "training" in plots:
        parts.append(f"<img src='{plots['training']}' alt='training curve'>")

    parts.append("<h2>Reviewers</h2>")
    reviews = results.get("reviews") or {}
    parts.append("<table><tr><th>reviewer</th><th>items</th><th>corrections</th><th>comparisons</th><th>flags</th>"
                 "<th>skips</th></tr>")
    for name, log in reviews.items():
        parts.append(f"<tr><td>{e(name)}{' (unreliable: random ratings)' if name == 'mallory' else ''}</td>"
                     f"<td>{sum('scores' in r for r in log)}</td><td>{sum('correction' in r for r in log)}</td>"
                     f"<td>{sum('comparison' in r for r in log)}</td><td>{sum('flag' in r for r in log)}</td>"
                     f"<td>{sum(r.get('action') == 'skip' for r in log)}</td></tr>")
    parts.append("</table>")
    agreement = results.get("agreement") or {}
    names = results.get("user_names") or {}
    if agreement.get("dimensions"):
        parts.append("<p>Krippendorff's alpha per rubric dimension (<code>GET /api/review/agreement</code>): "
                     + ", ".join(f"{e(d)} {_fmt(v.get('alpha'))} (n={v.get('n_items')})"
                                 for d, v in agreement["dimensions"].items()) + "</p>")
    if agreement.get("reviewers"):
        parts.append("<table><tr><th>reviewer</th><th>items</th><th>agreement with consensus</th>"
                     "<th>reliability</th></tr>")
        for rid, v in agreement["reviewers"].items():
            parts.append(f"<tr><td>{e(names.get(str(rid), str(rid)))}</td><td>{v.get('n_items')}</td>"
                         f"<td>{_fmt(v.get('agreement'))}</td><td>{_fmt(v.get('reliability'))}</td></tr>")
        parts.append("</table>")
    parts.append(f"<details><summary>raw agreement report</summary><pre>"
                 f"{e(json.dumps(results.get('agreement'), indent=1, default=str)[:4000])}</pre></details>")

    if "times" in plots:
        parts.append("<h2>Time per stage</h2>")
        parts.append("<table>" + "".join(f"<tr><td>{e(k)}</td><td>{v:.0f} s</td></tr>"
                                          for k, v in results["times"].items()) + "</table>")
        parts.append(f"<img src='{plots['times']}' alt='time per stage'>")

    parts.append("<h2>Every question</h2><table><tr><th>id</th><th>split</th><th>prompt</th><th>expected</th>"
                 "<th>before</th><th>after</th></tr>")
    answers = {i["id"]: i["answer"] for i in results["items"] + results["general"]}
    member = results.get("membership") or {}
    for kind in ("question", "paraphrase", "general"):
        for ident, b in results["before"][kind].items():
            a = results["after"][kind].get(ident, {})
            base = ident.split("#")[0]
            split = "general" if kind == "general" else (member.get(base, "not in SFT") +
                                                         (" · paraphrase" if kind == "paraphrase" else ""))
            mark = lambda r: "✔" if r.get("correct") else "✘"  # noqa: E731
            parts.append(f"<tr><td>{e(ident)}</td><td>{e(split)}</td><td class=t>{e(b['prompt'])}</td>"
                         f"<td class=t>{e(answers.get(base, ''))}</td><td class=t>{mark(b)} {e(b['text'])}</td>"
                         f"<td class=t>{mark(a)} {e(a.get('text', ''))}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def why(results: dict[str, Any]) -> str:
    """A plain-words explanation of missed targets (empty when all are met)."""
    s = results["summary"]
    notes = []
    t = s["targets"]
    if s.get("run_status") != "promoted" and s.get("forced"):
        notes.append(f"The gates rejected the candidate (run status {s.get('run_status')}; reasons: "
                     f"{s.get('gate_reasons')}). To show what it learned anyway, the demo promoted it by hand "
                     "through the admin API (recorded in the alias history), asked again, then rolled back: "
                     "the 'after' column is the rejected candidate.")
    elif s.get("run_status") != "promoted":
        notes.append(f"The candidate was not promoted (run status {s.get('run_status')}; gate reasons: "
                     f"{s.get('gate_reasons')}), so the 'after' answers come from the unchanged champion.")
    measured_candidate = s.get("run_status") == "promoted" or s.get("forced")
    if t["corrected_train"]["met"] is False and measured_candidate:
        notes.append("Fewer corrected train prompts than targeted are answered with the correction: the LoRA did "
                     "not fit the corrections closely enough (more epochs or a higher learning rate; the trainer "
                     "keeps the checkpoint with the best eval loss, which can stop before the facts are learned).")
    if t["paraphrases"]["met"] is False and measured_candidate:
        notes.append("Paraphrases are below target: with one phrasing per fact a 135M model learns the wording more "
                     "than the fact; the dataset builder's paraphrase expansion (snapshot option `paraphrases`) "
                     "adds variants.")
    if t["forgetting_loss_increase"]["met"] is False:
        notes.append("The forgetting set's loss rose more than 5% (the gate's set, shipped with the product).")
    if t.get("general_answer_drop", {}).get("met") is False and measured_candidate:
        lost = s["general_churn"]["lost"]
        notes.append(f"The model answers fewer of the demo's general questions: {len(lost)} that the base model "
                     f"answered right are now answered wrongly ({', '.join(lost)}; see the table below). "
                     "Remedies: a higher `sft.anchor_weight` or more anchor rows (snapshot option `anchors`), "
                     "fewer epochs or a lower learning rate.")
    if t["corrected_train"]["met"] is None:
        notes.append("No corrected question reached the SFT train split, so the main target could not be measured.")
    return " ".join(notes) or "All measured targets are met."


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo-report.html"
    path.write_text(render(results))
    return path
