"""The demo's self-contained HTML report: before/after table, target verdicts, plots (base64 PNG),
training curve, reviewer agreement, time per stage and every question with both answers."""

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

LABELS = {"corrected_train": "corrected prompts (train split)", "paraphrases": "paraphrases of them (never reviewed)",
          "corrected_heldout": "corrected prompts (validation + test splits, not trained on)",
          "uncorrected": "asked, not corrected", "general": "general set (not picked by the base model's answers)"}


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
    tags = list(dict.fromkeys(str(s.get("stage", "training")) for s in steps if "loss" in s or "eval_loss" in s))
    if tags:  # one curve per training stage (and learning-rate search trial) of the run
        fig, ax = plt.subplots(figsize=(7.5, 3))
        for k, tag in enumerate(tags):
            mine = [s for s in steps if str(s.get("stage", "training")) == tag]
            train = [(s["step"], s["loss"]) for s in mine if "loss" in s]
            evals = [(s["step"], s["eval_loss"]) for s in mine if "eval_loss" in s]
            color = f"C{k % 10}"
            if train:
                ax.plot(*zip(*train), label=f"{tag}: train loss", color=color)
            if evals:
                ax.plot(*zip(*evals), "o--", label=f"{tag}: validation loss", color=color)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
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
    churn, net = s["general_churn"], s.get("general_net") or {}
    net_text = ("" if net.get("net") is None else
                f" Net change {net['net']:+.1%} (95% paired-bootstrap interval {net['ci95'][0]:+.1%} .. "
                f"{net['ci95'][1]:+.1%}).")
    parts.append(f"<p>General set churn: the candidate lost {len(churn['lost'])} answers the base model had "
                 f"right and gained {len(churn['gained'])} it had wrong.{net_text} The set is fixed, not picked by what "
                 "the base model answers: a set picked for being right can only get worse, since a small model's "
                 "weakly held answers flip both ways under any update.</p>")
    if "accuracy" in plots:
        parts.append(f"<img src='{plots['accuracy']}' alt='accuracy before and after'>")

    parts.append("<h2>Targets (PRODUCT.md §3 Improvement)</h2><p>The demo's own checks on greedy answers; the "
                 "retrain ran on the product's defaults (<code>POST /api/retrain/runs {}</code>, default gate "
                 "policy), so a target missed here is the product's to fix.</p><table><tr><th>target</th>"
                 "<th>value</th><th>threshold</th><th>verdict</th></tr>")
    names = {"corrected_train": "corrected train prompts answered with the correction",
             "paraphrases": "their paraphrases (never reviewed) answered correctly",
             "general_no_net_drop": "general set: no net drop beyond its 95% interval (net change; upper bound)"}
    for key, v in s["targets"].items():
        verdict = {True: "<span class=ok>met</span>", False: "<span class=bad>NOT met</span>",
                   None: "<span class=na>not measured</span>"}[v["met"]]
        if key == "general_no_net_drop":
            ci = v.get("ci95") or [None, None]
            value = "–" if v["value"] is None else f"{v['value']:+.1%}; upper bound {ci[1]:+.1%}"
            threshold = "upper bound ≥ 0"
        else:
            value, threshold = _pct(v["value"]), f"≥ {v['target']:.0%}"
        parts.append(f"<tr><td>{e(names.get(key, key))}</td><td>{e(value)}</td><td>{e(threshold)}</td>"
                     f"<td>{verdict}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p>{e(why(results))}</p>")

    run = results.get("run") or {}
    gate = s.get("gate") or {}
    anchors = s.get("anchors") or {}
    members = s.get("membership_counts") or {}
    dataset = results.get("dataset") or {}
    parts.append("<h2>Retrain run and gates</h2><table>"
                 f"<tr><th>run</th><td>#{_fmt(run.get('id'))} · status <b>{_fmt(run.get('status'))}</b> · "
                 f"candidate {_fmt(run.get('candidate_version'))} · promoted by the gates {_fmt(results.get('promoted'))}"
                 f" · promoted by hand to measure {_fmt(results.get('forced'))}</td></tr>"
                 "<tr><th>config</th><td>product defaults: <code>POST /api/retrain/runs {}</code>, no "
                 "HITL_RETRAIN_CONFIG, no HITL_GATE_POLICY</td></tr>"
                 f"<tr><th>gate decision</th><td><b>{_fmt(gate.get('decision'))}</b></td></tr>"
                 "<tr><th>reasons</th><td>" + ("<br>".join(e(str(r)) for r in gate.get("reasons") or []) or "none")
                 + "</td></tr>"
                 f"<tr><th>not applicable</th><td>{_fmt(', '.join(map(str, gate.get('not_applicable') or [])) or None)}"
                 "</td></tr>"
                 f"<tr><th>corrected questions per split</th><td>train {_fmt(members.get('train'))} · validation "
                 f"{_fmt(members.get('validation'))} · test {_fmt(members.get('test'))}</td></tr>"
                 f"<tr><th>anchor rows</th><td>{_fmt(anchors.get('rows'))} rows the candidate was held to (KL to the "
                 "champion: served replies nobody faulted and general-pool rows); measured questions among them: "
                 f"{_fmt(len(anchors.get('measured_questions', [])))} (the baseline was asked with conversation "
                 "logging off)</td></tr>"
                 f"<tr><th>plan</th><td><small>{e(json.dumps((run.get('plan') or {}).get('stages'), default=str))}"
                 "</small></td></tr>"
                 f"<tr><th>snapshot counts</th><td><small>{e(json.dumps(dataset.get('counts') or (run.get('plan') or {}).get('counts'), default=str))}"
                 "</small></td></tr>"
                 f"<tr><th>error</th><td><small>{_fmt((run.get('error') or '')[-800:] or None)}</small></td></tr></table>")
    if gate.get("gates"):
        parts.append("<table><tr><th>gate</th><th>passed</th><th>evidence</th><th>metric</th><th>value</th>"
                     "<th>bound</th><th>threshold</th><th>n / min</th><th>champion → candidate</th><th>note</th></tr>")
        for name, g in gate["gates"].items():
            passed = {True: "<span class=ok>passed</span>", False: "<span class=bad>failed</span>",
                      None: "<span class=na>undecided</span>"}[g.get("passed")]
            parts.append(f"<tr><td>{e(name)}</td><td>{passed}</td><td>{_fmt(g.get('evidence'))}</td>"
                         f"<td><small>{_fmt(g.get('metric'))}</small></td><td>{_fmt(g.get('value'))}</td>"
                         f"<td>{_fmt(g.get('bound'))}</td><td>{_fmt(g.get('threshold'))}</td>"
                         f"<td>{_fmt(g.get('n'))} / {_fmt(g.get('min_n'))}</td>"
                         f"<td>{_fmt(g.get('champion'))} → {_fmt(g.get('candidate'))}</td>"
                         f"<td class=t>{_fmt(g.get('note') or None)}</td></tr>")
        parts.append("</table>")
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
    """A plain-words account of the decision and of missed targets (no tuning advice: the demo runs on the
    product's defaults, so a miss is the product's to fix)."""
    s = results["summary"]
    notes = []
    t = s["targets"]
    status, reasons = s.get("run_status"), "; ".join(map(str, s.get("gate_reasons") or [])) or "none given"
    if status == "promoted":
        notes.append("The gates promoted the candidate: the 'after' column is the new champion.")
    elif s.get("forced"):
        notes.append(f"The gates did not promote the candidate (run status {status}; reasons: {reasons}). To show "
                     "what it learned anyway, the demo promoted it by hand through the admin API (recorded in the "
                     "alias history), asked again, then rolled back: the 'after' column is that candidate.")
    else:
        notes.append(f"No candidate was promoted (run status {status}; reasons: {reasons}), so the 'after' answers "
                     "come from the unchanged champion.")
    if status == "insufficient_evidence":
        notes.append("insufficient_evidence means a required gate had too little held-out data to decide (its "
                     "min_n): with few corrected questions the test split holds only a few question groups.")
    measured_candidate = status == "promoted" or s.get("forced")
    if t["corrected_train"]["met"] is False and measured_candidate:
        notes.append("Fewer corrected train prompts than targeted are answered with the correction: the candidate "
                     "trained on the product's default budget (see the plan above, or `hitl retrain plan`) did not "
                     "fit the corrections closely enough.")
    if t["paraphrases"]["met"] is False and measured_candidate:
        notes.append("Paraphrases are below target: the candidate learned the wording of the corrected prompts more "
                     "than the facts.")
    if t["general_no_net_drop"]["met"] is False and measured_candidate:
        lost = s["general_churn"]["lost"]
        notes.append(f"The candidate answers fewer of the demo's general questions, beyond the interval's noise: "
                     f"{len(lost)} that the base model answered right are now answered wrongly "
                     f"({', '.join(lost)}; see the table below).")
    if t["corrected_train"]["met"] is None:
        notes.append("No corrected question reached the SFT train split, so the main target could not be measured.")
    if all(v["met"] is True for v in t.values()):
        notes.append("All targets are met.")
    return " ".join(notes)


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo-report.html"
    path.write_text(render(results))
    return path
