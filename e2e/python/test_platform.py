"""The platform as its users meet it (`make e2e`), on the local cluster of
e2e/with-cluster with a real node (containerd, runc, kubelet, kube-proxy,
CoreDNS, metrics-server and a NetworkPolicy enforcer in a network namespace of
this run) and PostgreSQL and Redis of e2e/with-services.

A platform team installs Tenantgate with `helm install` from charts/tenantgate
(then, separately, with `kubectl apply --server-side -f manifests/install.yaml`),
applies tenants, McpConnections and PromptPolicies with kubectl and waits with
`kubectl wait`; tenants' applications then talk to their gateways with the
official openai and mcp SDKs; GitOps changes (a policy edit, a Secret rotation,
a new autoscaling range, a deleted tenant) take effect without anyone touching
the running objects by hand.

Everything runs as the pods Kubernetes makes from the images of `make images`:
the operator as the chart's Deployment (as its ServiceAccount, so the chart's
RBAC allows or refuses each request), each tenant's gateway as the Deployment
the operator wrote (its ConfigMap and Secrets mounted and synced by the
kubelet), the tenants' upstreams (mock-llm, mcp-echo, server-everything) as
pods in their own namespace. The suite reaches Services and pods from inside
the node's network namespace, as an in-cluster client would
(e2e_support.NetnsForward), and proves the NetworkPolicies by opening
connections from pods.

The tests are steps of one story and run in file order; pytest stops at the
first failure (-x) and conftest.py prints the operator, gateway and API server
logs with it. The last step prints the summary line `E2E runtime=... nodes=N
real_pods=N images=N netpol_denied=N netpol_allowed=N ...`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from mcp.shared.exceptions import MCPError

import tenant_app as app
from e2e_support import (
    EXAMPLES,
    FIXTURES,
    GATEWAY_IMAGE,
    IMAGE_VERSION,
    OPERATOR_NAMESPACE,
    ROOT,
    WORK,
    ClientPod,
    Gateway,
    McpEcho,
    NetnsForward,
    NodeAddress,
    Operator,
    StepFailed,
    Upstreams,
    env,
    expose,
    fixture_dir,
    get_json,
    is_ready,
    kubectl,
    logs,
    mint_token,
    pods_of,
    rolled_out,
    run,
    tag_image,
    unexpose,
    wait_for,
)

GATEWAY_BIN = os.environ["GATEWAY_BIN"]
# The operator's command line on this machine, for its table of managed kinds (`kinds`).
OPERATOR_BIN = env("TENANTGATE_OPERATOR_BIN")
TENANTS = ("quickstart", "acme")
NAMESPACES = {"quickstart": "tg-quickstart", "acme": "tg-acme"}
QUICKSTART_KEY = EXAMPLES / "quickstart/dev-signing-key.pem"
ACME_KEY = FIXTURES / "acme/dev-signing-key.pem"
# The instance metadata address of AWS, GCP, Azure and OpenStack.
METADATA_IP = "169.254.169.254"
# The HPA test: acme's gateway CPU request, and the words of each streamed answer of its load.
HPA_CPU_REQUEST = "20m"
HPA_REPLY_WORDS = 1500


def owned_kinds() -> str:
    """Kinds the operator makes in a tenant namespace (HPA and PDB for acme only),
    from its table of managed kinds; optional ones (CRDs this cluster lacks) left out."""
    rows = [line.split() for line in run([OPERATOR_BIN, "kinds"]).splitlines()]
    return ",".join(r[0] for r in rows if r[3] == "Namespaced" and r[5] == "required")


OWNED_KINDS = owned_kinds()


class State:
    """What the steps share."""

    operator: Operator | None = None
    upstreams: Upstreams | None = None
    values: dict[str, str]
    dirs: dict[str, Path] = {}
    gateways: dict[str, Gateway] = {}
    tokens: dict[str, str] = {}
    admin_tokens: dict[str, str] = {}
    # For the summary line: connections the NetworkPolicies refused and let through (each asserted).
    netpol_denied = 0
    netpol_allowed = 0
    real_pods: set[str] = set()
    rollout_lost: int | None = None
    hpa_scaled = "none"
    hpa_down = "none"


S = State()


@pytest.fixture(scope="module", autouse=True)
def teardown():
    yield
    for g in S.gateways.values():
        g.stop()
    if S.upstreams:
        S.upstreams.close()


def note_pods() -> None:
    """Counts every pod that ran on the real node so far (for the summary line)."""
    for p in get_json("pods", "-A")["items"]:
        if p["status"].get("containerStatuses") and any(
                "running" in c.get("state", {}) or "terminated" in c.get("state", {})
                for c in p["status"]["containerStatuses"]):
            S.real_pods.add(p["metadata"]["uid"])


def apply_everything() -> list[str]:
    """Every `kubectl apply` a platform team runs for the two tenants, in order; their outputs."""
    return [
        kubectl("apply", "-f", str(EXAMPLES / "global")),
        kubectl("apply", "-f", str(EXAMPLES / "quickstart")),
        kubectl("apply", "-f", str(S.dirs["quickstart"])),
        kubectl("apply", "-f", str(S.dirs["acme"])),
        kubectl("apply", "-f", str(EXAMPLES / "acme/30-policy.yaml")),
    ]


def fill_fixtures(**overrides: str) -> None:
    S.dirs["quickstart"] = fixture_dir("quickstart", S.values, overrides)
    S.dirs["acme"] = fixture_dir("acme", S.values, overrides)


def wait_ready(*tenants: str, timeout: str = "120s") -> None:
    try:
        kubectl("wait", "--for=condition=Ready", *(f"tenant/{t}" for t in tenants), f"--timeout={timeout}", timeout=200)
    except StepFailed as e:
        status = kubectl("get", "tenants", "-o", "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}")
        raise StepFailed(f"{e}\nstatus:\n{status}") from None


# ---------------------------------------------------------------------------
# Scenario 1: helm install


def test_helm_install_and_the_operator_as_the_charts_service_account():
    out = run(
        ["helm", "install", "tenantgate", str(ROOT / "charts/tenantgate"),
         "--namespace", OPERATOR_NAMESPACE, "--create-namespace"],
    )
    assert "STATUS: deployed" in out, out
    kubectl("wait", "--for=condition=Established", "crd/tenants.tenantgate.dev",
            "crd/mcpconnections.tenantgate.dev", "crd/promptpolicies.tenantgate.dev",
            "crd/modelprices.tenantgate.dev", "crd/apikeys.tenantgate.dev", "--timeout=60s")
    S.operator = Operator()
    # The chart's RBAC is what the operator has: it can list tenants, and not, say, read Secrets' data.
    # The token the operator runs with is the chart's ServiceAccount, which is not a cluster admin.
    sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:tenantgate-operator"
    assert kubectl("auth", "can-i", "list", "tenants.tenantgate.dev", "--as", sa).strip() == "yes"
    assert kubectl("auth", "can-i", "*", "*", "--as", sa, check=False).strip() == "no"
    # The chart's own test hook: a pod of the operator image probes the operator's /readyz
    # through its metrics Service (cluster DNS, kube-proxy) and passes on a 200.
    out = run(["helm", "test", "tenantgate", "--namespace", OPERATOR_NAMESPACE, "--logs", "--timeout", "120s"],
              timeout=180)
    # (helm exits non-zero when the hook fails.)
    assert "tenantgate-operator-test-readyz" in out and re.search(r"Phase:\s+Succeeded", out), out


def test_platform_team_applies_tenants_connections_and_policies():
    S.upstreams = Upstreams()
    S.values = {
        "MOCK_LLM": S.upstreams.mock.in_cluster,
        "ECHO_URL": McpEcho.in_cluster,
        "EVERYTHING_URL": Upstreams.everything_in_cluster,
        # PostgreSQL and Redis run on this machine; pods reach them through an address in the node's namespace.
        "REDIS_URL": expose(env("TENANTGATE_REDIS_URL"), 6379),
        "POSTGRES_URL": expose(env("TENANTGATE_POSTGRES_URL"), 5432),
        "OPENAI_KEY": "sk-e2e-first",
        "MIN_REPLICAS": "2",
        "MAX_REPLICAS": "10",
        "GATEWAY_CPU": "100m",
        "NODE_IP": env("TENANTGATE_NODE_IP"),
    }
    fill_fixtures()
    kubectl("apply", "-f", str(EXAMPLES / "global"))
    kubectl("apply", "-f", str(EXAMPLES / "quickstart"))
    apply_everything()
    wait_ready(*TENANTS)
    for ns in NAMESPACES.values():
        kubectl("wait", "--for=condition=Accepted", "mcpconnections,promptpolicies", "--all", "-n", ns, "--timeout=60s")
    kubectl("wait", "--for=condition=Accepted", "promptpolicy/platform-baseline", "-n", OPERATOR_NAMESPACE,
            "--timeout=60s")
    table = kubectl("get", "tenants")
    for t in TENANTS:
        assert t in table, table


def test_gateways_run_as_pods_of_the_gateway_image():
    for tenant in TENANTS:
        S.gateways[tenant] = Gateway(tenant)
    S.tokens["quickstart"] = mint_token(GATEWAY_BIN, EXAMPLES / "quickstart", QUICKSTART_KEY, "bob@quickstart.example")
    S.tokens["acme"] = mint_token(GATEWAY_BIN, S.dirs["acme"], ACME_KEY, "alice@acme.example")
    S.admin_tokens["quickstart"] = mint_token(
        GATEWAY_BIN, EXAMPLES / "quickstart", QUICKSTART_KEY, "admin@quickstart.example", ("tenant-admin",))
    S.admin_tokens["acme"] = mint_token(GATEWAY_BIN, S.dirs["acme"], ACME_KEY, "admin@acme.example", ("tenant-admin",))
    for tenant, g in S.gateways.items():
        pods = g.pods()
        assert pods and all(is_ready(p) for p in pods), [p["status"] for p in pods]
        for p in pods:
            # The operator's Deployment, run by containerd from the image `make images` built.
            (status,) = [c for c in p["status"]["containerStatuses"] if c["name"] == "gateway"]
            assert status["image"].startswith("ghcr.io/tenantgate/gateway:"), status
            assert status["containerID"].startswith("containerd://"), status
        # The config each pod serves is the one the operator wrote (same content hash).
        assert serving_written_config(g.namespace)
        # Probes and metrics answer on the Service's metrics port, not on the API port an Ingress routes.
        assert httpx.get(g.ops_url + "/metrics", timeout=10).status_code == 200
        for path in ("/metrics", "/readyz", "/livez"):
            assert httpx.get(g.url + path, timeout=10).status_code == 404, path
    note_pods()


def serving_written_config(namespace: str) -> bool:
    """Whether every gateway pod of `namespace` serves the config the operator wrote last (the
    content hash its /readyz reports, each pod asked directly by its pod IP, against the
    ConfigMap's annotation): what a hot reload waits for."""
    want = get_json("configmap", "gateway-config", "-n", namespace)["metadata"]["annotations"]["tenantgate.dev/config-hash"]
    served = {}
    for p in pods_of(namespace, get_json("deployment", "gateway", "-n", namespace)):
        forward = NetnsForward(p["status"]["podIP"], 9090)
        try:
            served[p["metadata"]["name"]] = httpx.get(forward.url + "/readyz", timeout=10).json()["configHash"]
        finally:
            forward.close()
    if not served or set(served.values()) != {want}:
        raise StepFailed(f"{namespace}: pods serve {served}, the ConfigMap has {want}")
    return True


@pytest.mark.parametrize("tenant", TENANTS)
def test_tenant_app_chats_streams_and_calls_mcp_tools(tenant):
    g, token = S.gateways[tenant], S.tokens[tenant]
    assert "chat-default" in app.models(g.url, token)
    before = S.upstreams.mock.count("gpt-4o-mini")
    answer = app.chat(g.url, token, "chat-default", "Hello from the tenant app")
    assert answer
    if tenant == "acme":
        # Routed to the openai provider's upstream (mock-llm) with the Secret's key.
        assert S.upstreams.mock.count("gpt-4o-mini") == before + 1
        assert S.upstreams.mock.last("gpt-4o-mini")["credential"] == "Bearer sk-e2e-first"
        # Amazon Bedrock with the pod's web identity: the token the kubelet projected passed
        # mock-llm's STS (checked against the API server's keys), and the Converse call was
        # signed with the temporary credentials STS issued.
        assert app.chat(g.url, token, "chat-bedrock", "Hello from the tenant app")
        credential = S.upstreams.mock.last("anthropic.claude-haiku-4-5-20251001-v1:0")["credential"]
        assert credential.startswith("AWS4-HMAC-SHA256 Credential=ASIA"), credential
    chunks, text, finish = app.stream(g.url, token, "chat-default", "Stream a few words please")
    assert chunks > 1 and text and finish == "stop", (chunks, text, finish)
    tools = app.mcp_tools(g.url, token)
    calls = S.upstreams.echo.calls()
    if tenant == "quickstart":
        assert "echo_echo" in tools and "echo_secret_delete" not in tools, tools
        assert app.mcp_call(g.url, token, "echo_echo", {"text": "hi from quickstart"}) == (False, "hi from quickstart")
    else:
        assert {"everything_echo", "everything_get-sum", "github_echo"} <= tools, tools
        assert "github_secret_delete" not in tools
        is_error, text = app.mcp_call(g.url, token, "everything_get-sum", {"a": 2, "b": 40})
        assert not is_error and "42" in text, text
        assert app.mcp_call(g.url, token, "github_echo", {"text": "hi from acme"}) == (False, "hi from acme")
        # The upstream got the McpConnection's bearer Secret, never the tenant's token.
        assert S.upstreams.echo.last_auth() == "Bearer ghp-e2e-token"
    assert S.upstreams.echo.calls() == calls + 1


def test_a_stateless_mcp_client_is_answered_by_every_replica_behind_the_service():
    """A 2026-07-28 client (the MCP Python SDK, stateless: no initialize, no
    session) through acme's Service, a new connection per request so that
    kube-proxy spreads them: every call is answered, and every ready gateway pod
    answered some (each pod's own tool-call counter, read at its pod IP)."""
    g, token = S.gateways["acme"], S.tokens["acme"]

    def serving_pods():
        # The HPA brings the Deployment to its minimum of 2 after its first sync; each pod
        # then connects to the github upstream on its own.
        pods = [p for p in g.pods() if is_ready(p)]
        connected = all(pod_metric(p, 'tenantgate_mcp_connection_up{connection="github"}') == 1 for p in pods)
        return pods if len(pods) >= 2 and connected else None

    pods = wait_for("two ready acme gateway pods connected to the github upstream", serving_pods, 180, 2)
    before = {p["metadata"]["name"]: github_calls(p) for p in pods}
    # 20 connections miss one of two pods with odds of 2^-19; 1.1 s apart to keep within
    # acme's per-user rate (60 a minute, burst 6), which MCP requests count against.
    texts = app.stateless_mcp_calls(g.url, token, "github_echo", [{"text": f"stateless {i}"} for i in range(20)],
                                    pause=1.1)
    assert texts == [f"stateless {i}" for i in range(20)], texts
    after = {p["metadata"]["name"]: github_calls(p) for p in pods}
    served = {name: after[name] - before[name] for name in before}
    assert sum(served.values()) == 20 and all(n > 0 for n in served.values()), served


def test_each_gateway_pod_sizes_its_budgets_from_its_containers_memory_limit():
    """On a real node each gateway container runs in a memory cgroup of its
    Deployment's limit; the gateway reads it there (cgroup v1 or v2) and
    derives its budgets from it: a quarter at 64 KiB a request in flight, an
    eighth for request bodies (docs/operations.md, Overload)."""
    g = S.gateways["quickstart"]
    pods = wait_for("a ready quickstart gateway pod", lambda: [p for p in g.pods() if is_ready(p)] or None, 180, 2)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for pod in pods:
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
        number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", container["resources"]["limits"]["memory"]).groups()
        limit = int(number) * units[unit]
        assert pod_metric(pod, 'tenantgate_capacity{resource="in_flight"}') == limit // 4 // 65536, limit
        assert pod_metric(pod, 'tenantgate_capacity{resource="body_bytes"}') == limit // 8, limit


def github_calls(pod: dict) -> float:
    """The pod's count of answered calls to acme's `github` connection."""
    return pod_metric(pod, 'tenantgate_mcp_tool_calls_total{connection="github",outcome="ok"}')


def pod_metric(pod: dict, series: str) -> float:
    """A series of the pod's own /metrics (read at its pod IP); 0 when absent."""
    forward = NetnsForward(pod["status"]["podIP"], 9090)
    try:
        text = httpx.get(forward.url + "/metrics", timeout=10).text
    finally:
        forward.close()
    return sum(float(line.removeprefix(series + " ")) for line in text.splitlines() if line.startswith(series + " "))


def test_a_chat_runs_the_tenants_mcp_tools_server_side():
    """The quickstart's model (the mock provider) calls the first tool it is
    offered; the gateway runs it through /mcp's hub at e2e/mcp-echo and feeds
    the result back, and the tool call is audited with the chat's request id."""
    g, token = S.gateways["quickstart"], S.tokens["quickstart"]
    calls = S.upstreams.echo.calls()
    answer, headers = app.chat_with_mcp_tools(g.url, token, "chat-default", "What does the echo tool say?", ["echo"])
    assert answer == "Tool results: mock", answer
    assert headers["tenantgate-mcp-finish"] == "answered", headers
    assert headers["tenantgate-mcp-tool-calls"] == "1", headers
    assert S.upstreams.echo.calls() == calls + 1
    request_id = headers["x-request-id"]

    def tool_call_events():
        r = httpx.get(g.url + "/admin/v1/audit", params={"kind": "toolCall", "limit": 1000},
                      headers={"Authorization": f"Bearer {S.admin_tokens['quickstart']}"})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["data"] if e["requestId"] == request_id]

    events = wait_for("the tool call's audit event", tool_call_events, 10)
    assert len(events) == 1 and events[0]["resource"] == "echo_echo", events


# ---------------------------------------------------------------------------
# Tool pinning: drift in the McpConnection's status

WRONG_PIN = "0" * 64


def echo_connection(pin: str | None, timeout: int = 30) -> str:
    """quickstart's `echo` McpConnection as the fixture has it, with `pin: block`
    and `pin` as the pin of the tool `echo` (None: the fixture as it is)."""
    text = (S.dirs["quickstart"] / "20-mcp-echo.yaml").read_text()
    if pin is not None:
        marker = '    deny: ["secret_*"]\n'
        assert marker in text, text
        text = text.replace(marker, marker + f'    pin: block\n    pins: {{echo: "{pin}"}}\n')
    return text.replace("timeoutSeconds: 30", f"timeoutSeconds: {timeout}")


def echo_status() -> dict:
    return get_json("mcpconnection", "echo", "-n", NAMESPACES["quickstart"], "--show-managed-fields")


def conditions_observed(obj: dict) -> bool:
    """Whether the operator's conditions are about the object's current generation."""
    conditions = obj.get("status", {}).get("conditions", [])
    generation = obj["metadata"]["generation"]
    return bool(conditions) and all(c.get("observedGeneration") == generation for c in conditions)


def writes_by_pod(g: Gateway, line: str) -> dict[str, int]:
    """How many times each running gateway pod logged `line`."""
    counts: dict[str, int] = {}
    for entry in g.logs().splitlines():
        if line in entry and entry.startswith("[pod/"):
            pod = entry[len("[pod/"):].split("/", 1)[0]
            counts[pod] = counts.get(pod, 0) + 1
    return counts


def test_a_drifted_tool_shows_in_the_connection_status_until_its_pin_is_fixed():
    """The gateway publishes status.driftedTools itself (server-side apply, field manager
    tenantgate-gateway, with the token of its projected volume); the operator's own status
    writes leave the field alone; fixing the pin removes it."""
    g, token = S.gateways["quickstart"], S.tokens["quickstart"]
    applied = "McpConnection status.driftedTools applied"
    kubectl("apply", "-f", "-", input=echo_connection(WRONG_PIN))
    started = time.monotonic()

    def drifted():
        return echo_status().get("status", {}).get("driftedTools") == ["echo"]

    wait_for("status.driftedTools of the pinned connection", drifted, 120)
    took = time.monotonic() - started
    conn = echo_status()
    owners = [f for f in conn["metadata"]["managedFields"] if "f:driftedTools" in str(f.get("fieldsV1"))]
    assert [(f["manager"], f["operation"], f.get("subresource")) for f in owners] == \
        [("tenantgate-gateway", "Apply", "status")], owners
    # `block`: the drifted tool is hidden, by every pod once it serves the new config.
    wait_for("the gateway serving the config with the pin", lambda: serving_written_config(g.namespace), 120)
    tools = app.mcp_tools(g.url, token)
    assert "echo_echo" not in tools and tools, tools

    # An operator status write (a new generation, which its conditions follow) keeps the field.
    # The edit changes the config, which the running pods reload (no restart), reconnecting
    # the connection. What must not happen: a pod that published the drift writing it again.
    before = writes_by_pod(g, applied)
    assert before, "no gateway pod logged its status apply"
    kubectl("apply", "-f", "-", input=echo_connection(WRONG_PIN, timeout=31))
    wait_for("the operator's conditions at the new generation", lambda: conditions_observed(echo_status()), 60)
    wait_for("the gateway serving the edited config", lambda: serving_written_config(g.namespace), 120)
    assert "echo_echo" not in app.mcp_tools(g.url, token), "the drifted tool offered after the reload"
    conn = echo_status()
    assert conn["status"].get("driftedTools") == ["echo"], conn["status"]
    after = writes_by_pod(g, applied)
    assert after == before, f"status.driftedTools applied again after the reload: {before} -> {after}"

    # The pin fixed (the hash the drift's audit event names): the field goes, the tool is back.
    r = httpx.get(g.url + "/admin/v1/audit", params={"kind": "toolPinDrift", "limit": 100},
                  headers={"Authorization": f"Bearer {S.admin_tokens['quickstart']}"})
    assert r.status_code == 200, r.text
    (event,) = [e for e in r.json()["data"] if e["resource"] == "echo/echo"][:1]
    kubectl("apply", "-f", "-", input=echo_connection(event["details"]["actualHash"]))

    def cleared():
        obj = echo_status()
        return "driftedTools" not in obj.get("status", {}) and conditions_observed(obj)

    wait_for("status.driftedTools gone after the pin is fixed", cleared, 120)
    wait_for("echo_echo offered again", lambda: "echo_echo" in app.mcp_tools(g.url, token), 120)
    # Back to what git says (no pins), so the GitOps steps below start from it.
    kubectl("apply", "-f", str(S.dirs["quickstart"] / "20-mcp-echo.yaml"))
    wait_for("the fixture's connection accepted again", lambda: conditions_observed(echo_status()), 60)
    wait_for("the gateway serving the fixture's config", lambda: serving_written_config(g.namespace), 120)
    print(f"status.driftedTools published {took:.1f} s after kubectl apply")


# ---------------------------------------------------------------------------
# Isolation


def test_one_tenants_token_is_refused_by_the_other_gateway():
    for a, b in (("acme", "quickstart"), ("quickstart", "acme")):
        with pytest.raises(openai.AuthenticationError):
            app.chat(S.gateways[b].url, S.tokens[a], "chat-default", "hello")
        r = httpx.get(S.gateways[b].url + "/admin/v1/usage", headers={"Authorization": f"Bearer {S.admin_tokens[a]}"})
        assert r.status_code == 401, r.text
        r = httpx.post(S.gateways[b].url + "/mcp", headers={"Authorization": f"Bearer {S.tokens[a]}",
                       "Accept": "application/json, text/event-stream"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401, r.text


def test_one_tenants_mcp_connections_never_appear_in_the_others_tools():
    quickstart = app.mcp_tools(S.gateways["quickstart"].url, S.tokens["quickstart"])
    acme = app.mcp_tools(S.gateways["acme"].url, S.tokens["acme"])
    assert quickstart and acme
    assert not any(t.startswith(("everything_", "github_")) for t in quickstart), quickstart
    assert not any(t.startswith("echo_") for t in acme), acme
    calls = S.upstreams.echo.calls()
    try:
        is_error, text = app.mcp_call(S.gateways["quickstart"].url, S.tokens["quickstart"], "github_echo", {"text": "x"})
        assert is_error, text
    except MCPError as e:
        assert "github_echo" in str(e) or "unknown" in str(e).lower(), e
    assert S.upstreams.echo.calls() == calls, "a call to another tenant's tool reached its upstream"


def usage(tenant: str, subject: str) -> dict:
    r = httpx.get(S.gateways[tenant].url + "/admin/v1/usage", params={"subject": subject},
                  headers={"Authorization": f"Bearer {S.admin_tokens[tenant]}"})
    assert r.status_code == 200, r.text
    return r.json()["totals"]


def test_one_tenants_usage_never_appears_in_the_others_admin_api():
    subjects = {"acme": "alice@acme.example", "quickstart": "bob@quickstart.example"}
    # Fresh usage: quickstart keeps its usage in SQLite inside the pod (no spec.storage.database),
    # and the config edits above replaced its pods, and that data with them.
    for tenant in subjects:
        for _ in range(2):
            assert app.chat(S.gateways[tenant].url, S.tokens[tenant], "chat-default", "counted")
    for tenant, subject in subjects.items():
        wait_for(f"{tenant}'s usage of {subject} recorded", lambda: usage(tenant, subject)["requests"] >= 2, 30)
    assert usage("quickstart", subjects["acme"])["requests"] == 0
    assert usage("acme", subjects["quickstart"])["requests"] == 0
    for tenant, other in (("quickstart", "acme"), ("acme", "quickstart")):
        r = httpx.get(S.gateways[tenant].url + "/admin/v1/audit", params={"limit": 500},
                      headers={"Authorization": f"Bearer {S.admin_tokens[tenant]}"})
        assert r.status_code == 200, r.text
        assert subjects[other] not in r.text and f"admin@{other}" not in r.text


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a metav1.LabelSelector selects an object with `labels` (the API's semantics)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def test_network_policies_select_exactly_the_tenants_pods():
    namespaces = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in get_json("namespaces")["items"]}
    all_pods = get_json("pods", "-A")["items"]
    for tenant, ns in NAMESPACES.items():
        gateway_pods = {p["metadata"]["name"] for p in pods_of(ns, get_json("deployment", "gateway", "-n", ns))}
        assert gateway_pods, f"no gateway pods in {ns}"
        policies = get_json("networkpolicies", "-n", ns)["items"]
        assert policies, f"no NetworkPolicy in {ns}"
        fenced, types = set(), set()
        for pol in policies:
            spec = pol["spec"]
            selected = {p["metadata"]["name"] for p in all_pods if p["metadata"]["namespace"] == ns
                        and selects(spec["podSelector"], p["metadata"].get("labels", {}))}
            name = pol["metadata"]["name"]
            # A policy applies in its own namespace only; there it must pick the tenant's gateway pods, nothing else.
            assert selected <= gateway_pods, f"{ns}/{name} selects pods that are not the tenant's gateway: {selected}"
            fenced |= selected
            if selected:
                types |= set(spec.get("policyTypes", []))
            # No rule lets the other tenant's namespace in.
            for rule in spec.get("ingress") or []:
                for peer in rule.get("from") or []:
                    if "namespaceSelector" not in peer:
                        continue
                    allowed = {n for n, labels in namespaces.items() if selects(peer["namespaceSelector"], labels)}
                    for other, other_ns in NAMESPACES.items():
                        if other != tenant:
                            assert other_ns not in allowed, f"{ns}/{name} admits {other_ns}: {peer}"
        assert fenced == gateway_pods, f"gateway pods of {ns} not fenced: {gateway_pods - fenced}"
        assert types == {"Ingress", "Egress"}, f"{ns}: the gateway pods are fenced for {types} only"


def pod_ips(namespace: str, selector: str) -> list[str]:
    return [p["status"]["podIP"] for p in get_json("pods", "-n", namespace, "-l", selector)["items"]
            if p["status"].get("podIP")]


def expect(client: ClientPod, host: str, port: int, allowed: bool, why: str) -> None:
    """Asserts that `client` can (or cannot) open a TCP connection to host:port, and counts it."""
    got = client.connects(host, port)
    assert got == allowed, f"{client.namespace}/{client.name} -> {host}:{port}: " \
        f"{'connected' if got else 'refused'}, want {'connected' if allowed else 'refused'} ({why})"
    if allowed:
        S.netpol_allowed += 1
    else:
        S.netpol_denied += 1


def test_network_policies_are_enforced_on_the_node():
    """The fence as traffic meets it: connections opened from pods, refused or let
    through by the node's NetworkPolicy enforcer, never read from YAML."""
    gateway_selector = "app.kubernetes.io/component=gateway"
    acme_ips = pod_ips("tg-acme", gateway_selector)
    quickstart_ips = pod_ips("tg-quickstart", gateway_selector)
    acme_svc = get_json("service", "gateway", "-n", "tg-acme")["spec"]["clusterIP"]
    mock_svc = get_json("service", "mock-llm", "-n", "e2e-upstreams")["spec"]["clusterIP"]
    dns_svc = get_json("service", "kube-dns", "-n", "kube-system")["spec"]["clusterIP"]
    assert acme_ips and quickstart_ips
    for ns, labels in (("e2e-outsider", {}), ("ingress-nginx", {}), ("e2e-decoy", {}),
                       ("e2e-scraper", {"tenantgate.dev/metrics-scraper": "true"})):
        kubectl("create", "namespace", ns)
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", *(f"{k}={v}" for k, v in labels.items()))
    pods: list[ClientPod] = []
    metadata: NodeAddress | None = None
    try:
        # A server nothing names: any pod may reach it unless a policy says otherwise.
        decoy = ClientPod("e2e-decoy", "decoy", {"app": "decoy"}, command=["busybox", "httpd", "-f", "-p", "8080", "-h", "/"])
        pods.append(decoy)
        decoy_ip = get_json("pod", "decoy", "-n", "e2e-decoy")["status"]["podIP"]
        other_tenant = ClientPod("tg-quickstart", "netcheck")
        outsider = ClientPod("e2e-outsider", "netcheck")
        ingress = ClientPod("ingress-nginx", "netcheck")
        scraper = ClientPod("e2e-scraper", "netcheck")
        # A pod with acme's gateway labels: fenced by acme's NetworkPolicy exactly as its gateway is.
        acme_labels = get_json("deployment", "gateway", "-n", "tg-acme")["spec"]["selector"]["matchLabels"]
        fenced = ClientPod("tg-acme", "netcheck-as-gateway", acme_labels)
        pods += [other_tenant, outsider, ingress, scraper, fenced]
        metadata = NodeAddress(METADATA_IP, (80, 443, 5432, 6379))

        # Ingress to acme's gateway.
        for ip in acme_ips:
            expect(other_tenant, ip, 8080, False, "another tenant's namespace")
            expect(outsider, ip, 8080, False, "a namespace not in allowIngressFrom")
            expect(ingress, ip, 8080, True, "allowIngressFrom names ingress-nginx")
        expect(other_tenant, acme_svc, 8080, False, "another tenant's namespace, through the Service")
        expect(ingress, acme_svc, 8080, True, "allowIngressFrom, through the Service")
        # Probes and metrics (port 9090): scrapers only; API callers and scrapers each get their port.
        for ip in acme_ips:
            expect(ingress, ip, 9090, False, "the metrics port is not open to API callers")
            expect(scraper, ip, 9090, True, "a namespace labelled tenantgate.dev/metrics-scraper")
            expect(scraper, ip, 8080, False, "scrapers do not call the API")
        expect(scraper, acme_svc, 9090, True, "a scraper, through the Service's metrics port")
        # Egress of acme's gateway pods.
        expect(outsider, decoy_ip, 8080, True, "control: an unfenced pod reaches the decoy")
        expect(fenced, decoy_ip, 8080, False, "a private address the tenant's config does not name")
        for ip in quickstart_ips:
            expect(fenced, ip, 8080, False, "another tenant's gateway")
        expect(fenced, mock_svc, 8080, True, "the tenant's declared provider")
        expect(fenced, dns_svc, 53, True, "cluster DNS")
        # The cloud metadata address, answered by the node as a cloud's node answers it; also
        # on the storage ports, which are open only towards the storage acme declares.
        for p in (80, 443, 5432, 6379):
            expect(outsider, METADATA_IP, p, True, "control: an unfenced pod reaches the metadata address")
            expect(fenced, METADATA_IP, p, False, "the cloud metadata address")
        node_ip = env("TENANTGATE_NODE_IP")
        for p in (5432, 6379):
            expect(fenced, node_ip, p, True, "the PostgreSQL and Redis acme declares (storage.*.egress)")
    finally:
        if metadata:
            metadata.close()
        for p in pods:
            p.delete()
        kubectl("delete", "namespace", "e2e-outsider", "ingress-nginx", "e2e-decoy", "e2e-scraper", "--wait=false")
    note_pods()


def test_a_tenant_whose_secret_is_missing_is_not_ready():
    """On a real node a pod cannot start without the Secrets it mounts: the Tenant must
    say so (Ready False, Degraded MissingSecret) rather than read Ready from a Deployment."""
    tenant = (EXAMPLES / "quickstart/00-tenant.yaml").read_text()
    tenant = tenant[tenant.index("apiVersion: tenantgate.dev/v1alpha1"):]
    tenant = tenant.replace("name: quickstart\n", "name: e2e-missing\n", 1).replace(
        "jwksSecretRef: { name: quickstart-jwks", "jwksSecretRef: { name: not-there")
    assert "e2e-missing" in tenant and "not-there" in tenant, tenant
    kubectl("apply", "-f", "-", input=tenant)
    try:
        def conditions():
            status = get_json("tenant", "e2e-missing").get("status", {})
            by_type = {c["type"]: c for c in status.get("conditions", [])}
            if "Ready" not in by_type or "Degraded" not in by_type:
                return None
            return by_type

        def degraded():
            c = conditions()
            return c and c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "MissingSecret" and c

        by_type = wait_for("tenant e2e-missing Degraded=MissingSecret", degraded, 120)
        assert by_type["Ready"]["status"] == "False", by_type["Ready"]
        pods = get_json("pods", "-n", "tg-e2e-missing")["items"]
        assert pods and not any(is_ready(p) for p in pods), [p["status"] for p in pods]
        # Still not Ready a while later: nothing flips it back while the Secret is missing.
        time.sleep(5)
        assert conditions()["Ready"]["status"] == "False"
    finally:
        kubectl("delete", "tenant", "e2e-missing", "--wait=true", "--timeout=120s", timeout=150)


# ---------------------------------------------------------------------------
# GitOps


def snapshot() -> dict[str, tuple]:
    """Per object (every Tenantgate object and every object in the tenants' namespaces): its
    resourceVersion, generation and the managedFields entries of everything but status."""
    out = {}
    shown = "--show-managed-fields"
    items = get_json("tenants,mcpconnections,promptpolicies", "-A", shown)["items"]
    for ns in NAMESPACES.values():
        items += get_json(OWNED_KINDS, "-n", ns, shown)["items"]
        items.append(get_json("namespace", ns, shown))
    for o in items:
        m = o["metadata"]
        writers = sorted(
            (f.get("manager"), f.get("operation"), f.get("time"))
            for f in m.get("managedFields", [])
            if f.get("subresource") != "status"
        )
        out[f"{o['kind']} {m.get('namespace', '')}/{m['name']}"] = (m["resourceVersion"], m.get("generation"), writers)
    return out


def operator_writes() -> float:
    total = 0.0
    for line in "\n".join(S.operator.metrics()).splitlines():
        if line.startswith("tenantgate_operator_api_requests_total") and 'kind="write"' in line \
                and 'resource="leases"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def settled() -> bool:
    """Every gateway Deployment rolled out, and acme's scaled by its HPA to at least minReplicas
    (the HPA controller's first sync comes up to 15 s after the HPA appears)."""
    for tenant, ns in NAMESPACES.items():
        rolled_out(ns)
        want = get_json("deployment", "gateway", "-n", ns)["spec"].get("replicas")
        if tenant == "acme":
            hpa = get_json("hpa", "gateway", "-n", ns)
            if want < hpa["spec"]["minReplicas"]:
                raise StepFailed(f"{ns}/gateway has {want} replicas, HPA minimum {hpa['spec']['minReplicas']}")
    return True


def test_a_second_apply_of_the_same_yaml_changes_nothing():
    # Let what the first apply started settle (rollouts, the HPA's first scaling).
    wait_for("the tenants' Deployments settled", settled, 120)
    time.sleep(2)
    before, writes = snapshot(), operator_writes()
    outputs = apply_everything()
    time.sleep(8)  # the operator has seen every event the apply caused by now
    after = snapshot()
    assert set(after) == set(before), set(after) ^ set(before)
    # A new resourceVersion is a write. The only ones allowed are the cluster's own status
    # updates (the HPA controller records its metrics attempts): same generation, and no
    # entry of managedFields outside the status subresource changed.
    changed = {k: (before[k], after[k]) for k in before if after[k][0] != before[k][0]}
    written = {k: v for k, v in changed.items() if v[0][1:] != v[1][1:]}
    assert not written, f"objects written by a no-op apply: {written}\nkubectl said:\n{''.join(outputs)}"
    print(f"{len(before)} objects unchanged but for status updates by cluster controllers: {sorted(changed)}")
    assert operator_writes() == writes, "the operator wrote to the API server after a no-op apply"


def policy_with_deny(text: str) -> str:
    marker = "    promptInjection: block\n"
    assert marker in text
    return text.replace(marker, marker + '    denyPatterns: ["(?i)purple elephant"]\n')


def pod_uids(namespace: str) -> set[str]:
    return {p["metadata"]["uid"] for p in pods_of(namespace, get_json("deployment", "gateway", "-n", namespace))}


def test_a_prompt_policy_edit_reaches_the_running_gateway_in_seconds():
    """The edit reaches the pods that run (a hot reload), none restarts: in-process state
    (here: quickstart's SQLite usage and MCP sessions, no Redis) stays."""
    g, token = S.gateways["quickstart"], S.tokens["quickstart"]
    assert app.chat(g.url, token, "chat-default", "Tell me about the purple elephant")
    pods = pod_uids(g.namespace)
    original = (EXAMPLES / "quickstart/10-policy.yaml").read_text()
    kubectl("apply", "-f", "-", input=policy_with_deny(original))
    started = time.monotonic()

    def refused():
        try:
            app.chat(g.url, token, "chat-default", "Tell me about the purple elephant")
            return False
        except openai.BadRequestError as e:
            assert e.code == "policy_violation" and "tg-quickstart/assistant" in str(e), (e.code, e.body)
            return True

    # The config change reaches the tenant's pods through their watch on gateway-config (the
    # API server), and the kubelet's sync of the configMap volume (syncFrequency 10s on this
    # node, the kubelet's default is 1 minute) would bring it too; the gateway reloads it.
    wait_for("the edited PromptPolicy enforced by the tenant's gateway", refused, 120)
    took = time.monotonic() - started
    # Back to what git says: allowed again.
    kubectl("apply", "-f", str(EXAMPLES / "quickstart/10-policy.yaml"))

    def allowed():
        return app.chat(g.url, token, "chat-default", "Tell me about the purple elephant")

    wait_for("the reverted PromptPolicy applied", allowed, 120)
    assert pod_uids(g.namespace) == pods, "a PromptPolicy edit restarted the tenant's gateway pods"
    assert rolled_out(g.namespace)
    print(f"policy edit enforced by the tenant's gateway {took:.1f} s after kubectl apply, no pod restarted")


def test_a_rotated_provider_secret_is_used_without_a_restart():
    g, token = S.gateways["acme"], S.tokens["acme"]
    template = get_json("deployment", "gateway", "-n", "tg-acme")["spec"]["template"]
    pods = pod_uids(g.namespace)
    fill_fixtures(OPENAI_KEY="sk-e2e-rotated")
    kubectl("apply", "-f", str(S.dirs["acme"] / "10-secrets.yaml"))

    def rotated():
        app.chat(g.url, token, "chat-default", "which key?")
        return S.upstreams.mock.last("gpt-4o-mini")["credential"] == "Bearer sk-e2e-rotated"

    started = time.monotonic()
    wait_for("the upstream receiving the rotated key", rotated, 120)
    print(f"rotated key used {time.monotonic() - started:.1f} s after kubectl apply")
    # The gateway reads a provider key when it uses it: the operator leaves the pods alone.
    assert get_json("deployment", "gateway", "-n", "tg-acme")["spec"]["template"] == template, \
        "rotating a provider key changed the gateway's pod template"
    assert pod_uids(g.namespace) == pods, "rotating a provider key restarted the gateway pods"


E2E_API_KEY = """apiVersion: tenantgate.dev/v1alpha1
kind: ApiKey
metadata: {name: e2e-app, namespace: tg-acme}
spec: {roles: [app], allowedModels: [chat-default], team: apps, budget: {amount: "0.01", period: Day}}
"""


def api_key_value(namespace: str, name: str) -> str | None:
    """The key of a Ready ApiKey, read as its owner would: from the Secret its status names."""
    key = get_json("apikey", name, "-n", namespace)
    status = key.get("status", {})
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    if not ready or status.get("observedGeneration") != key["metadata"]["generation"]:
        return None
    secret = get_json("secret", status["secretName"], "-n", namespace)
    return base64.b64decode(secret["data"]["apiKey"]).decode()


def test_an_api_key_applied_with_kubectl_works_in_seconds_and_is_refused_in_seconds_once_deleted():
    """An ApiKey object: the operator generates its key into a Secret and its hash into
    gateway-config, which the running gateways watch through the API server (not the
    kubelet's volume sync): accepted, then refused after a delete, no pod restarted."""
    g = S.gateways["acme"]
    pods = pod_uids(g.namespace)
    kubectl("apply", "-f", "-", input=E2E_API_KEY)
    started = time.monotonic()
    key = wait_for("the ApiKey's key generated and Ready", lambda: api_key_value(g.namespace, "e2e-app"), 60)
    assert key.startswith("tg_"), "the admin API's key format"
    wait_for("the new key accepted by acme's gateway", lambda: app.chat(g.url, key, "chat-default", "hello"), 60)
    accepted_after = time.monotonic() - started
    # Its allowedModels hold: another model of the tenant is refused, naming it.
    with pytest.raises(openai.PermissionDeniedError) as refused_model:
        app.chat(g.url, key, "chat-smart", "hello")
    assert refused_model.value.code == "model_not_allowed", refused_model.value.body
    # Its budget holds: a request whose worst case (4000 output tokens at the fallback target's
    # 4 USD per million) is more than the key's 0.01 USD is refused before it goes upstream.
    with pytest.raises(openai.APIStatusError) as over_budget:
        app.client(g.url, key).chat.completions.create(
            model="chat-default", messages=[{"role": "user", "content": "hello"}], max_tokens=4000)
    assert over_budget.value.status_code == 402, over_budget.value.body
    assert over_budget.value.response.headers.get("x-budget-scope") == "apiKey", over_budget.value.response.headers
    assert "The API key budget of 0.01 USD per day (UTC)" in str(over_budget.value.body), over_budget.value.body

    kubectl("delete", "apikey", "e2e-app", "-n", g.namespace, "--wait=true")
    deleted = time.monotonic()

    def refused():
        try:
            app.chat(g.url, key, "chat-default", "hello")
            return False
        except openai.AuthenticationError as e:
            return e.status_code == 401

    wait_for("the deleted key refused by acme's gateway", refused, 60)
    refused_after = time.monotonic() - deleted
    assert pod_uids(g.namespace) == pods, "an ApiKey restarted the tenant's gateway pods"
    secret_part = key.split("_", 2)[2]  # after tg_<prefix>_ (base64url may hold "_" itself)
    for where, text in (("gateway", logs(g.namespace, g.selector)), ("operator", S.operator.logs()),
                        ("ConfigMap", kubectl("get", "configmap", "gateway-config", "-n", g.namespace, "-o", "yaml"))):
        assert secret_part not in text, f"the key's value is in the {where}'s output"
    print(f"ApiKey accepted {accepted_after:.1f} s after kubectl apply, refused {refused_after:.1f} s after "
          f"kubectl delete (the kubelet's volume sync here: 10 s), no pod restarted")


def hpa_replicas() -> tuple[int, int, int]:
    """acme's gateway Deployment: (spec replicas, ready replicas, pods including those still draining)."""
    d = get_json("deployment", "gateway", "-n", "tg-acme")
    return d["spec"].get("replicas", 0), d["status"].get("readyReplicas", 0), len(pods_of("tg-acme", d))


def test_the_hpa_scales_a_gateway_up_under_load_and_back_down():
    """CPU as metrics-server reads it from the kubelet: while chats stream through acme's
    Service, the HPA the operator made from spec.gateway.autoscaling adds gateway pods, and
    when the load stops it removes them again. (The cluster's kube-controller-manager waits
    30 s before scaling down instead of 5 minutes: e2e/cluster/node.sh.)"""
    g = S.gateways["acme"]
    # A GitOps change of the autoscaling spec and the CPU request reaches the HPA and the pods.
    fill_fixtures(OPENAI_KEY="sk-e2e-rotated", GATEWAY_CPU=HPA_CPU_REQUEST, MAX_REPLICAS="4")
    kubectl("apply", "-f", str(S.dirs["acme"] / "00-tenant.yaml"))

    def hpa_spec():
        spec = get_json("hpa", "gateway", "-n", "tg-acme")["spec"]
        return (spec["minReplicas"], spec["maxReplicas"]) == (2, 4)

    wait_for("HPA gateway at minReplicas 2, maxReplicas 4", hpa_spec, 30)

    def requests_cpu():
        d = get_json("deployment", "gateway", "-n", "tg-acme")
        cpu = {c["name"]: c["resources"]["requests"]["cpu"] for c in d["spec"]["template"]["spec"]["containers"]}
        return cpu.get("gateway") == HPA_CPU_REQUEST and rolled_out("tg-acme")

    wait_for(f"acme's gateway pods requesting {HPA_CPU_REQUEST} CPU", requests_cpu, 180)

    def idle_measured():
        # The HPA reads a utilization for every pod, and the idle gateways are under the target.
        hpa = get_json("hpa", "gateway", "-n", "tg-acme")
        current = [m["resource"]["current"].get("averageUtilization") for m in hpa["status"].get("currentMetrics") or []
                   if m.get("type") == "Resource"]
        if not current or current[0] is None:
            raise StepFailed(f"HPA has no CPU reading yet: {hpa['status']}")
        if current[0] >= hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]:
            raise StepFailed(f"idle gateways at {current[0]}% of their CPU request")
        return True

    wait_for("the HPA reading the idle gateways' CPU below its target", idle_measured, 120, 2)
    start, ready, _ = hpa_replicas()
    assert (start, ready) == (2, 2), f"acme's gateway before the load: {hpa_replicas()}"

    # Load: long streamed answers (one SSE event per word, each parsed, scanned and re-encoded
    # by the gateway) from several users, within acme's per-user and tenant rate limits.
    words = " ".join(f"w{i}" for i in range(HPA_REPLY_WORDS))
    httpx.post(S.upstreams.mock.url + "/_control/script", json={
        "model": "gpt-4o-mini", "steps": [], "default": {"reply": words, "chunk_interval_ms": 0}}).raise_for_status()
    users = [f"hpa-{i}@acme.example" for i in range(8)]
    tokens = {u: mint_token(GATEWAY_BIN, S.dirs["acme"], ACME_KEY, u) for u in users}
    results: list[int] = []
    stop = threading.Event()

    def load(user: str) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                with httpx.stream("POST", g.url + "/v1/chat/completions", timeout=60,
                                  headers={"Authorization": f"Bearer {tokens[user]}", "Connection": "close"},
                                  json={"model": "chat-default", "stream": True,
                                        "messages": [{"role": "user", "content": "load"}]}) as r:
                    for _ in r.iter_bytes():
                        pass
                    results.append(r.status_code)
            except httpx.HTTPError:
                results.append(0)
            stop.wait(max(0.0, 1.5 - (time.monotonic() - started)))

    threads = [threading.Thread(target=load, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    peak = start
    try:
        def scaled_up():
            nonlocal peak
            want, ready, _ = hpa_replicas()
            peak = max(peak, want)
            if want <= start or ready < want:
                raise StepFailed(f"acme's gateway at {want} replicas ({ready} ready) after {len(results)} chats")
            return True

        loaded = time.monotonic()
        wait_for("the HPA adding gateway pods under load", scaled_up, 240, 2)
        print(f"scaled {start}->{peak} {time.monotonic() - loaded:.0f} s after the load started "
              f"({len(results)} chats, {results.count(200)} answered 200)")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
        httpx.post(S.upstreams.mock.url + "/_control/script", json={"model": "gpt-4o-mini", "steps": []})
    assert results and results.count(200) == len(results), \
        f"chats refused or failed under load: {[c for c in results if c != 200][:10]} of {len(results)}"

    stopped = time.monotonic()

    def scaled_down():
        want, ready, pods = hpa_replicas()
        if (want, ready, pods) != (2, 2, 2):
            raise StepFailed(f"acme's gateway at {want} replicas, {ready} ready, {pods} pods")
        return True

    wait_for("the HPA removing the added pods once the load stopped", scaled_down, 240, 2)
    print(f"scaled {peak}->2 {time.monotonic() - stopped:.0f} s after the load stopped")
    S.hpa_scaled = f"{start}->{peak}"
    S.hpa_down = f"{peak}->2"
    wait_ready("acme", timeout="60s")


def test_a_rolling_update_under_load_loses_no_request_and_no_usage_row():
    """Chats from several users at a steady rate through acme's Service while a new image tag
    rolls every gateway pod (maxUnavailable 0, the PDB, readiness off then a drain on SIGTERM):
    every request answered, and every answer is a usage row in PostgreSQL."""
    g = S.gateways["acme"]
    users = [f"loader-{i}@acme.example" for i in range(6)]
    tokens = {u: mint_token(GATEWAY_BIN, S.dirs["acme"], ACME_KEY, u) for u in users}
    before_pods = {p["metadata"]["uid"] for p in g.pods()}
    new_image = f"{GATEWAY_IMAGE}-e2e.1"
    tag_image(GATEWAY_IMAGE, new_image)

    def recorded() -> int:
        return sum(usage("acme", u)["requests"] for u in users)

    rows_before = recorded()
    results: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def load(user: str) -> None:
        # One user: a request every 2 s (acme allows 60 a minute per user), each on a new connection.
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = httpx.post(g.url + "/v1/chat/completions", timeout=30,
                               headers={"Authorization": f"Bearer {tokens[user]}", "Connection": "close"},
                               json={"model": "chat-default", "messages": [{"role": "user", "content": "steady"}]})
                results.append((user, r.status_code, r.text[:200] if r.status_code != 200 else ""))
            except httpx.HTTPError as e:
                results.append((user, 0, f"{type(e).__name__}: {e}"))
            stop.wait(max(0.0, 2.0 - (time.monotonic() - started)))

    threads = [threading.Thread(target=load, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    try:
        time.sleep(4)
        # The tenant moves to the next release of the gateway image (here: the same image under a new tag).
        kubectl("patch", "tenant", "acme", "--type", "merge", "-p", json.dumps({"spec": {"gateway": {"image": new_image}}}))

        def replaced():
            uids = {p["metadata"]["uid"] for p in g.pods()}
            return not (uids & before_pods) and rolled_out(g.namespace)

        wait_for("every acme gateway pod replaced by the rollout", replaced, 300, 1)
        time.sleep(4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    images = {c["image"] for p in g.pods() for c in p["spec"]["containers"] if c["name"] == "gateway"}
    assert images == {new_image}, f"gateway pods after the rollout run {images}, want {new_image}"
    lost = [r for r in results if r[1] != 200]
    S.rollout_lost = len(lost)
    answered = len(results) - len(lost)
    print(f"{len(results)} chats during the rollout, {len(lost)} lost")
    assert len(results) >= 30, f"only {len(results)} requests were sent during the rollout"
    assert not lost, f"requests lost during the rollout: {lost[:10]}"

    wait_for(f"{answered} usage rows of the loaders", lambda: recorded() - rows_before >= answered, 60)
    assert recorded() - rows_before == answered, \
        f"{recorded() - rows_before} usage rows for {answered} answered requests"


def test_a_stdio_connection_runs_as_its_bridge_deployment_and_answers_through_mcp():
    """A stdio McpConnection in a cluster: the operator runs the server's image (here
    server-everything on Node.js, built by `make images`) as a Deployment of its own, the
    gateway's static stdio-bridge copied in by an init container; the tenant's /mcp lists
    and calls its tools through it. The bridge's NetworkPolicy lets only the tenant's gateway
    pods connect to it."""
    g, token = S.gateways["acme"], S.tokens["acme"]
    connection = {
        "apiVersion": "tenantgate.dev/v1alpha1", "kind": "McpConnection",
        "metadata": {"name": "local", "namespace": "tg-acme"},
        "spec": {
            "transport": "stdio",
            "tools": {"prefix": "local"},
            "stdio": {
                "image": f"tenantgate.dev/e2e/mcp-everything:{IMAGE_VERSION}",
                "command": ["node", "/opt/mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"],
                "args": ["stdio"],
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(connection))
    try:
        kubectl("wait", "--for=condition=Accepted", "mcpconnection/local", "-n", "tg-acme", "--timeout=60s")
        kubectl("rollout", "status", "deployment/mcp-local", "-n", "tg-acme", "--timeout=180s", timeout=200)
        bridge = get_json("deployment", "mcp-local", "-n", "tg-acme")["spec"]["template"]["spec"]
        assert [c["image"] for c in bridge["containers"]] == [connection["spec"]["stdio"]["image"]], bridge
        wait_for("acme's gateway serving the config with the new connection",
                 lambda: serving_written_config("tg-acme"), 180)
        wait_for("the stdio server's tools offered", lambda: "local_get-sum" in app.mcp_tools(g.url, token), 60)

        def answered() -> bool:
            # Each session may land on either gateway pod; each connects to the bridge on its own.
            for _ in range(4):
                is_error, text = app.mcp_call(g.url, token, "local_get-sum", {"a": 20, "b": 22})
                assert not is_error and "42" in text, text
            return True

        wait_for("the stdio server's tool answering through every gateway pod", answered, 60, 1)
        policy = get_json("networkpolicy", "mcp-local", "-n", "tg-acme")
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], policy["spec"]
        bridge_ips = pod_ips("tg-acme", "tenantgate.dev/mcp-connection=local")
        assert bridge_ips
        acme_labels = get_json("deployment", "gateway", "-n", "tg-acme")["spec"]["selector"]["matchLabels"]
        clients = [ClientPod("tg-acme", "bridge-as-gateway", acme_labels), ClientPod("tg-acme", "bridge-neighbour"),
                   ClientPod("tg-quickstart", "bridge-other-tenant")]
        try:
            as_gateway, neighbour, other_tenant = clients
            # The gateway reached the bridge above with the generated token (the bridge answers
            # nothing without it: the image smoke test and the python suite prove the 401).
            token = base64.b64decode(get_json("secret", "mcp-local-bridge-token", "-n", "tg-acme")["data"]["token"]).decode()
            assert len(token) == 44, "32 random bytes, base64"
            for ip in bridge_ips:
                expect(as_gateway, ip, 8080, True, "the tenant's gateway pods reach its stdio bridge")
                expect(neighbour, ip, 8080, False, "a pod of the tenant's namespace that is not its gateway")
                expect(other_tenant, ip, 8080, False, "another tenant's pod")
        finally:
            for c in clients:
                c.delete()
        note_pods()
    finally:
        kubectl("delete", "mcpconnection", "local", "-n", "tg-acme", "--ignore-not-found")
    for kind in ("deployment/mcp-local", "secret/mcp-local-bridge-token"):
        wait_for(f"the bridge's {kind} removed with its connection",
                 lambda: not kubectl("get", kind, "-n", "tg-acme", "--ignore-not-found", "-o", "name").strip(), 60)


def spilled(root: Path, subject: str) -> dict[str, int]:
    """Records of `subject` in each pod's spill file on a data volume (by directory)."""
    return {f.parent.name: sum(f'"subject":"{subject}"' in line for line in f.read_text(errors="replace").splitlines())
            for f in root.glob("spill/*/records.jsonl")}


def test_records_spilled_on_the_tenants_volume_outlive_their_pods():
    """acme gets a data volume (spec.storage.volume: the operator's claim, bound here to a
    hostPath PersistentVolume of the node). With PostgreSQL gone (its forward into the node
    stopped: open connections closed, new ones refused), answered chats are spilled into each
    pod's directory on the volume; the pods are deleted before PostgreSQL is back, and their
    replacements (which wait for it, alive and not ready) adopt what they left: each answered
    chat becomes exactly one usage row, and the directories of the deleted pods are removed."""
    g = S.gateways["acme"]
    subject = "spill@acme.example"
    token = mint_token(GATEWAY_BIN, S.dirs["acme"], ACME_KEY, subject)
    disk = WORK / "acme-data"
    disk.mkdir()
    disk.chmod(0o777)  # a hostPath keeps the node's owner; the gateway runs as 65532
    volume = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "e2e-acme-data"},
        "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "e2e-node-disk",
                 "claimRef": {"namespace": "tg-acme", "name": "gateway-data"},
                 "hostPath": {"path": str(disk), "type": "Directory"}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(volume))
    before = {p["metadata"]["uid"] for p in g.pods()}
    kubectl("patch", "tenant", "acme", "--type", "merge", "-p", json.dumps(
        {"spec": {"storage": {"volume": {"size": "64Mi", "storageClassName": "e2e-node-disk"}}}}))
    wait_for("the operator's claim gateway-data bound to the volume", lambda: kubectl(
        "get", "pvc", "gateway-data", "-n", "tg-acme", "--ignore-not-found", "-o", "jsonpath={.status.phase}") == "Bound", 60)

    def moved_to_the_volume() -> bool:
        uids = {p["metadata"]["uid"] for p in g.pods()}
        return not (uids & before) and rolled_out(g.namespace)

    wait_for("acme's gateway pods replaced by ones that mount the volume", moved_to_the_volume, 240, 1)
    assert usage("acme", subject)["requests"] == 0
    spilling = {p["metadata"]["name"] for p in g.pods()}
    chats = 12
    postgres = env("TENANTGATE_POSTGRES_URL")
    unexpose(postgres)
    try:
        for i in range(chats):
            assert app.chat(g.url, token, "chat-default", f"while the database is away ({i})")
            time.sleep(1.1)  # inside acme's per-user limit (60 a minute, a burst of 6)
        wait_for(f"the {chats} chats spilled onto the volume",
                 lambda: sum(spilled(disk, subject).values()) == chats, 60, 1)
        # Replaced while PostgreSQL is still away: what the pods hold is on the volume only.
        kubectl("delete", "pods", "-n", g.namespace, "-l", g.selector, "--wait=true", "--timeout=120s", timeout=150)
        left = spilled(disk, subject)
        assert sum(left.values()) == chats, left
        assert {d.rsplit(".", 1)[0] for d, n in left.items() if n} <= spilling, left
    finally:
        expose(postgres, 5432)
    try:
        wait_for(f"the {chats} spilled chats adopted by the new pods as usage rows",
                 lambda: usage("acme", subject)["requests"] >= chats, 240, 2)
    except StepFailed as e:
        raise StepFailed(f"{e}\nspilled: {spilled(disk, subject)}\n{g.logs()[-4000:]}") from None
    assert usage("acme", subject)["requests"] == chats, "a spilled record was written twice"
    # The replacements started while PostgreSQL was away: they waited for it, alive, not restarting.
    restarts = {name: n for name, _, n in g.pod_ids()}
    assert not any(restarts.values()), f"gateway pods restarted while waiting for the database: {restarts}"
    wait_for("the spill directories of the deleted pods removed", lambda: not any(
        d.name.rsplit(".", 1)[0] in spilling for d in (disk / "spill").iterdir()), 60, 1)
    note_pods()
    # The PersistentVolume goes once the tenant (and with it, its claim) is deleted.
    kubectl("delete", "persistentvolume", "e2e-acme-data", "--wait=false")


def test_deleting_a_tenant_removes_everything_it_made():
    for tenant in TENANTS:
        S.gateways.pop(tenant).stop()
    kubectl("delete", "tenant", *TENANTS, "--wait=false")

    def gone():
        left = []
        for ns in NAMESPACES.values():
            left += kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "name").split()
        left += kubectl("get", OWNED_KINDS + ",namespaces", "-A", "-l", "tenantgate.dev/tenant", "-o", "name").split()
        if left:
            raise StepFailed(f"still there: {left}")
        return True

    try:
        wait_for("every object of the deleted tenants gone", gone, 120, 1)
    except StepFailed as e:
        left = kubectl("get", OWNED_KINDS + ",pods", "-A", "-l", "tenantgate.dev/tenant", check=False)
        raise StepFailed(f"{e}\nleft:\n{left}") from None
    assert not get_json("tenants")["items"]


def test_helm_uninstall():
    S.operator = None
    kubectl("delete", "promptpolicy", "platform-baseline", "-n", OPERATOR_NAMESPACE)
    run(["helm", "uninstall", "tenantgate", "--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout", "60s"])
    assert not kubectl("get", "clusterroles", "-l", "app.kubernetes.io/name=tenantgate-operator", "-o", "name").strip()


# ---------------------------------------------------------------------------
# Scenario 2: plain manifests, then the README's commands


def test_install_with_plain_manifests():
    kubectl("apply", "--server-side", "-f", str(ROOT / "manifests/install.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/tenants.tenantgate.dev", "--timeout=60s")
    S.operator = Operator()


def test_the_readme_commands_run():
    """Every `sh` block of README.md marked `<!-- e2e:run -->`, in order (e2e/readme-run).

    The walkthrough's blocks need what a reader sets up around them: GATEWAY and
    GATEWAY_OPS (their port-forward; here the quickstart's Service's two ports, forwarded
    from the node's network namespace), MCP_URL (their MCP server; here e2e/mcp-echo's Service)
    and the mcp SDK on PATH's python3 (this suite's venv)."""
    kubectl("apply", "-f", str(EXAMPLES / "quickstart"))
    wait_ready("quickstart", timeout="180s")
    g = S.gateways["quickstart"] = Gateway("quickstart")
    environment = {
        **os.environ,
        "GATEWAY": g.url,
        "GATEWAY_OPS": g.ops_url,
        "MCP_URL": McpEcho.in_cluster + "/mcp",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    calls = S.upstreams.echo.calls()
    try:
        out = run([str(ROOT / "e2e/readme-run"), str(ROOT / "README.md")], timeout=600, env=environment)
    finally:
        S.gateways.pop("quickstart").stop()
    print(out)
    assert "Hello from the Tenantgate mock model" in out, out
    assert "tools_echo: hello through Tenantgate" in out, out
    assert "Tool results: mock" in out, out
    # Step 5 called the tool itself, step 6 had the gateway call it for the model.
    assert S.upstreams.echo.calls() == calls + 2


def test_the_quickstart_from_the_plain_install_answers_the_sdk():
    wait_ready("quickstart", timeout="180s")
    g = S.gateways["quickstart"] = Gateway("quickstart")
    assert app.chat(g.url, S.tokens["quickstart"], "chat-default", "Hello after kubectl apply")
    S.gateways.pop("quickstart").stop()
    kubectl("delete", "-f", str(EXAMPLES / "quickstart"), "--wait=true", "--timeout=120s")
    wait_for("namespace tg-quickstart gone",
             lambda: not kubectl("get", "namespace", "tg-quickstart", "--ignore-not-found", "-o", "name").strip(), 120, 1)


def test_make_demo_shows_the_flow_and_demo_down_removes_it():
    """`make demo` and `make demo-down` as the README tells a newcomer, on a
    cluster of their own (a separate TENANTGATE_RUN, with a short path: containerd's
    unix sockets live under it and may not be longer than 104 bytes)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="tg-demo-", dir="/tmp"))
    demo_env = {**os.environ, "TENANTGATE_DEMO_RUN": str(tmp_path / "demo-run")}
    try:
        out = run(["make", "-s", "-C", str(ROOT), "demo"], env=demo_env, timeout=600)
        assert "tenant.tenantgate.dev/quickstart" in out and "True" in out, out
        assert "assistant: Hello from the Tenantgate mock model" in out, out
        url = re.search(r"port-forward pid \d+ at (http://127\.0\.0\.1:\d+)", out).group(1)
        # The gateway answers through the forward (its API port: a request without a token is refused).
        assert httpx.get(url + "/v1/models", timeout=5).status_code == 401
    finally:
        # Down even when a step above failed: the demo's cluster must not outlive the test.
        run(["make", "-s", "-C", str(ROOT), "demo-down"], env=demo_env, timeout=300)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/v1/models", timeout=5)
    assert not (tmp_path / "demo-run").exists()
    tmp_path.rmdir()


def test_summary():
    """The run's one-line summary (after every other step passed)."""
    nodes = [n for n in get_json("nodes")["items"] if n["metadata"].get("labels", {}).get("type") != "kwok"]
    runtimes = sorted({n["status"]["nodeInfo"]["containerRuntimeVersion"] for n in nodes})
    images = {name for n in nodes for i in n["status"].get("images", []) for name in i.get("names", [])
              if name.startswith(("ghcr.io/tenantgate/", "tenantgate.dev/e2e/"))}
    note_pods()
    assert nodes and runtimes and all(r.startswith("containerd://") for r in runtimes), runtimes
    assert S.netpol_denied > 0 and S.netpol_allowed > 0 and S.rollout_lost == 0
    assert re.fullmatch(r"2->[34]", S.hpa_scaled) and S.hpa_down.endswith("->2"), (S.hpa_scaled, S.hpa_down)
    line = (f"E2E runtime={','.join(runtimes)} nodes={len(nodes)} real_pods={len(S.real_pods)} images={len(images)} "
          f"netpol_denied={S.netpol_denied} netpol_allowed={S.netpol_allowed} "
          f"rollout_lost_requests={S.rollout_lost} hpa_scaled={S.hpa_scaled} hpa_down={S.hpa_down}")
    print(line)
    # `make e2e` prints it as its last line.
    if os.environ.get("TENANTGATE_E2E_SUMMARY"):
        Path(os.environ["TENANTGATE_E2E_SUMMARY"]).write_text(line + "\n")
