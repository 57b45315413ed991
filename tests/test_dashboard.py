"""The Grafana dashboard in deploy/ reads metrics hitl really exports, and the compose stack provisions it."""

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hitl.json"


def exported(text: str) -> set[str]:
    """Every series name /metrics can carry: each `# TYPE` family (a histogram's with its suffixes)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def test_every_dashboard_query_uses_an_exported_metric(api, service_key, live_server):
    with live_server.client(service_key) as chat:
        assert chat.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                       "max_tokens": 2}).status_code == 200
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "thumbs": "down"}
    assert api.post("/api/import", content=json.dumps(record) + "\n",
                    headers={"Content-Type": "application/x-ndjson"}).status_code == 200
    text = api.get("/metrics").text
    names = exported(text)

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bhitl_[a-z_]+\b", e)}
    assert used and used <= names, f"not exported: {sorted(used - names)}"
    # the panels: requests, latency, tokens/s, queue depth, reviewer throughput, run outcomes, champion
    for metric in ("hitl_chat_requests_total", "hitl_chat_latency_seconds_bucket", "hitl_tokens_total",
                   "hitl_review_queue_open", "hitl_reviews_submitted_total", "hitl_retrain_runs_total",
                   "hitl_model_alias_info"):
        assert metric in used
    # the store's metrics carry this store's values
    assert re.search(r'^hitl_model_alias_info\{alias="champion",version="base"\} 1\.0$', text, re.M)
    assert re.search(r'^hitl_review_queue_open\{reason="thumbs_down"\} 1\.0$', text, re.M)
    assert re.search(r"^hitl_store_up 1\.0$", text, re.M)


def test_the_compose_stack_provisions_prometheus_and_grafana_with_the_dashboard():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = {m.split(":")[1]: DEPLOY / m.split(":")[0] for m in prometheus["volumes"] + grafana["volumes"]
              if m.startswith("./")}
    for source in mounts.values():
        assert source.exists(), source
    scrape = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())["scrape_configs"][0]
    api_port = services["api"]["ports"][0].split(":")[1]
    assert scrape["static_configs"][0]["targets"] == [f"api:{api_port}"] and scrape["metrics_path"] == "/metrics"

    provisioning = mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "hitl.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    dashboard = json.loads(DASHBOARD.read_text())
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {source["uid"]}
