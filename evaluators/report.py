"""Evaluation report: JSON, and a self-contained HTML page with the plots embedded as inline SVG."""

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _bars(results: list[dict]) -> str | None:
    """Candidate vs champion raw figure per evaluator."""
    rows = [r for r in results if r.get("candidate") is not None and r.get("champion") is not None]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 2.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        ax.bar(["champion", "candidate"], [r["champion"], r["candidate"]], color=["#888", "#2a7"])
        ax.set_title(r["name"], fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _svg(fig)


def _effects(results: list[dict]) -> str | None:
    """Each gate's value with its one-sided confidence bounds against its threshold / margin."""
    rows = [r for r in results if r.get("value") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(rows)))
    for i, r in enumerate(rows):
        colour = "#2a7" if r["passed"] else "#c33" if r["passed"] is False else "#888"
        lo, hi = r["ci"] or (r["value"], r["value"])
        ax.errorbar(r["value"], i, xerr=[[r["value"] - lo], [hi - r["value"]]], fmt="o", color=colour, capsize=3)
        if r.get("threshold") is not None:
            ax.plot([r["threshold"]], [i], marker="|", markersize=14, color="k")
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("value (dot), one-sided lower/upper bounds (bar) and threshold or margin (|)", fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def _trend(results: list[dict]) -> str | None:
    """General-set accuracy along the lineage: the base, each ancestor (from its stored gate report), the candidate."""
    cumulative = next((r for r in results if r["name"] == "cumulative" and (r.get("details") or {}).get("trend")), None)
    if cumulative is None:
        return None
    trend = cumulative["details"]["trend"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(trend)), 2.8))
    xs = list(range(len(trend)))
    ys = [t["accuracy"] if t.get("accuracy") is not None else float("nan") for t in trend]
    ax.plot(xs, ys, marker="o", color="#27a")
    for x, t, y in zip(xs, trend, ys):
        if "other set" in t.get("source", ""):
            ax.plot([x], [y], marker="o", color="#bbb")
    budget = cumulative["details"].get("budget")
    if budget is not None and ys and ys[0] == ys[0]:
        ax.axhline(ys[0] * (1 - budget), color="#c33", linestyle="--", linewidth=1, label="base x (1 - budget)")
        ax.legend(fontsize=7)
    ax.set_xticks(xs, [t["version"] for t in trend], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("general-set accuracy", fontsize=8)
    ax.set_title("drift along the lineage", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _svg(fig)


def _distributions(results: list[dict]) -> list[tuple[str, str]]:
    plots = []
    for r in results:
        series = r.get("series") or {}
        pairs = [(k, v) for k, v in series.items() if v]
        if len(pairs) != 2:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 2.6))
        for key, values in pairs:
            ax.hist(values, bins=20, alpha=0.55, label=key)
        ax.set_title(f"{r['name']}: per-example", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=8)
        fig.tight_layout()
        plots.append((r["name"], _svg(fig)))
    return plots


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return html.escape(str(value))


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    results = report["results"]
    verdict = report.get("decision") or report.get("outcome") or ("passed" if report["passed"] else "failed")
    rows = "".join(
        f"<tr class='{'ok' if r['passed'] else 'bad' if r['passed'] is False else 'na'}'><td>{e(r['name'])}"
        f"{' (required)' if r['name'] in report['required'] else ''}</td><td>{e(r['metric'])}</td>"
        f"<td>{_fmt(r['value'])}</td><td>{_fmt(r['ci'])}</td><td>{_fmt(r.get('bound'))}</td><td>{_fmt(r['threshold'])}</td>"
        f"<td>{_fmt(r['candidate'])}</td><td>{_fmt(r['champion'])}</td><td>{r['n']}{'' if not r.get('min_n') else ' / ' + str(r['min_n'])}</td>"
        f"<td>{e(str(r.get('evidence', 'sufficient')).replace('_', ' '))}</td>"
        f"<td>{_verdict(r)}</td><td>{e(r['note'])}</td></tr>"
        for r in results)
    figures = [p for p in (_effects(results), _bars(results), _trend(results)) if p]
    figures += [svg for _name, svg in _distributions(results)]
    golden = next((r for r in results if r["name"] == "golden" and r["details"].get("prompts")), None)
    golden_rows = "".join(
        f"<tr><td>{e(p['id'])}</td><td>{e(p['champion'])}</td><td>{e('; '.join(p['champion_failures']) or 'pass')}</td>"
        f"<td>{e(p['candidate'])}</td><td>{e('; '.join(p['candidate_failures']) or 'pass')}</td></tr>"
        for p in (golden["details"]["prompts"] if golden else []))
    details = json.dumps({r["name"]: {k: v for k, v in r["details"].items() if k != "prompts"} for r in results},
                         indent=2, default=str)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>hitl eval {e(report['candidate'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}tr.ok td:nth-child(11){{color:#171}}
tr.bad td:nth-child(11){{color:#b11;font-weight:bold}}.verdict{{font-size:1.4em}}figure{{display:inline-block;margin:.5em}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>Evaluation of <code>{e(report['candidate'])}</code> vs champion <code>{e(report['champion'])}</code></h1>
<p class="verdict">Decision: <b>{e(verdict)}</b></p>
<ul>{''.join(f'<li>{e(x)}</li>' for x in report['reasons']) or '<li>every required gate passed</li>'}
{''.join(f'<li>not applicable: {e(x)}</li>' for x in report.get('not_applicable', []))}</ul>
<p>snapshot {e(str(report.get('snapshot_hash')))} · run {e(str(report.get('run_id')))} · reference (base)
{e(str(report.get('reference')))} · {e(report['created_at'])} · gates {e(str((report.get('timings') or {}).get('total_s')))} s</p>
<table><tr><th>evaluator</th><th>metric</th><th>value</th><th>bounds (one-sided)</th><th>bound used</th>
<th>threshold / margin</th><th>candidate</th><th>champion / reference</th><th>n / min n</th><th>evidence</th><th>result</th>
<th>note</th></tr>{rows}</table>
{''.join(f'<figure>{svg}</figure>' for svg in figures)}
{f'<h2>Golden prompts</h2><table><tr><th>id</th><th>champion</th><th></th><th>candidate</th><th></th></tr>{golden_rows}</table>' if golden_rows else ''}
<h2>Details</h2><pre>{e(details)}</pre>
<h2>Policy</h2><pre>{e(json.dumps(report.get('policy'), indent=2, default=str))}</pre>
</body></html>"""


def _verdict(r: dict) -> str:
    if r["passed"] is True:
        return "pass"
    if r["passed"] is False:
        return "FAIL"
    return {"not_applicable": "n/a", "insufficient": "insufficient"}.get(r.get("evidence"), "n/a")


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    paths["html"].write_text(render_html(report))
    return paths
