"""The deploy files agree with themselves: hitl's vLLM settings match the vLLM servers they describe."""

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_compose_vllm_matches_hitl():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    api, vllm = compose["services"]["api"]["environment"], compose["services"]["vllm"]
    assert flag(vllm["command"], "--max-lora-rank") == api["HITL_VLLM_MAX_LORA_RANK"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and "--enable-lora" in vllm["command"]
    assert api["HITL_VLLM_URLS"] == f"http://vllm:{flag(vllm['command'], '--port')}"
    assert flag(vllm["command"], "--model").startswith(api["HITL_DATA_DIR"] + "/")  # same volume, same path
    assert any(v.split(":")[:2] == ["data", api["HITL_DATA_DIR"]] for v in vllm["volumes"])


def test_k8s_vllm_matches_hitl():
    docs = [d for f in ("hitl.yaml", "vllm.yaml") for d in yaml.safe_load_all((DEPLOY / "k8s" / f).read_text())]
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "hitl-api")
    vllm = next(d for d in docs if d["kind"] == "StatefulSet")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == vllm["spec"]["serviceName"])
    env = {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert env["HITL_BACKEND"] == "vllm" and service["spec"]["clusterIP"] == "None"
    assert flag(container["args"], "--max-lora-rank") == env["HITL_VLLM_MAX_LORA_RANK"]
    name, port = vllm["metadata"]["name"], flag(container["args"], "--port")
    assert env["HITL_VLLM_URLS"].split(",") == [f"http://{name}-{i}.{name}:{port}"
                                                for i in range(vllm["spec"]["replicas"])]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
              for v in vllm["spec"]["template"]["spec"]["volumes"]}
    assert mounts["data"] == env["HITL_DATA_DIR"] and claims["data"] == "hitl-data"
    assert flag(container["args"], "--model").startswith(env["HITL_DATA_DIR"] + "/")
