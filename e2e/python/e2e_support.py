"""Helpers of the platform scenarios (test_platform.py): kubectl and helm as a
platform team runs them, the cluster's pods reached the way clients inside the
cluster reach them, and bounded waits that fail with the logs that explain why.

Everything runs on the local cluster of e2e/with-cluster with real nodes
(TENANTGATE_REAL_NODES): the operator and every gateway are pods the kubelet
runs from the images of `make images`. This suite talks to the API server on
127.0.0.1 (KUBECONFIG) and to pods only inside the node's network namespace
(TENANTGATE_NODE_NETNS), through NetnsForward.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(os.environ.get("TENANTGATE_ROOT", Path(__file__).resolve().parents[2]))
FIXTURES = ROOT / "e2e/fixtures"
EXAMPLES = ROOT / "manifests/examples"
OPERATOR_NAMESPACE = "tenantgate-system"
OPERATOR_ACCOUNT = "tenantgate-operator"
# Where this run keeps its files (logs, volumes); printed on failure. `make demo`
# names a lasting one (TENANTGATE_E2E_WORK), since its processes outlive it.
WORK = Path(os.environ.get("TENANTGATE_E2E_WORK") or tempfile.mkdtemp(prefix="tenantgate-e2e-"))
WORK.mkdir(parents=True, exist_ok=True)

def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: run this suite with `make e2e` (e2e/with-services e2e/with-cluster ...)")
    return value


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({e})"
    return "\n".join(text[-lines:])


def diagnostics() -> str:
    """The tails of every log worth reading when a step fails: the operator's and
    the gateways' pods, the control plane and node components, the nodes'
    conditions and taints (DiskPressure evicts every pod), pods and events."""
    parts = []
    sources = [("operator", OPERATOR_NAMESPACE, "app.kubernetes.io/name=tenantgate-operator"),
               ("upstreams", "e2e-upstreams", "app")]
    try:
        gateway_namespaces = sorted({p["metadata"]["namespace"] for p in get_json(
            "pods", "-A", "-l", "app.kubernetes.io/name=tenantgate-gateway")["items"]})
    except StepFailed as e:
        gateway_namespaces = []
        parts.append(str(e))
    sources += [(f"gateways of {ns}", ns, "app.kubernetes.io/name=tenantgate-gateway") for ns in gateway_namespaces]
    for what, namespace, selector in sources:
        out = kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--prefix", "--tail=30",
                      "--max-log-requests=20", check=False)
        parts.append(f"===== {what} (kubectl logs) =====\n{out}")
    for log in sorted(Path(env("KUBECONFIG")).parent.glob("logs/*.log")):
        parts.append(f"===== {log.name} =====\n{tail(log, 15)}")
    for args in (("get", "nodes", "-o", 'jsonpath={range .items[*]}{.metadata.name}'
                  '{"  conditions: "}{.status.conditions[?(@.status=="True")].type}'
                  '{"  taints: "}{.spec.taints[*].key}{"\\n"}{end}'),
                 ("get", "tenantgate,deploy,hpa,pods", "-A", "-o", "wide"),
                 ("get", "events", "-A", "--sort-by=.lastTimestamp")):
        out = kubectl(*args, check=False)
        parts.append(f"===== kubectl {' '.join(args)} =====\n" + "\n".join(out.splitlines()[-40:]))
    return "\n\n".join(parts)


class StepFailed(AssertionError):
    """A step of a scenario failed; the message says which and why."""


def run(cmd: list[str], *, input: str | None = None, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> str:
    """Runs a command; on failure raises StepFailed with the command and its output."""
    try:
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        raise StepFailed(f"`{' '.join(cmd)}` did not finish within {timeout} s: {e.stdout}{e.stderr}") from None
    text = out.stdout + out.stderr
    if check and out.returncode != 0:
        raise StepFailed(f"`{' '.join(cmd)}` exited {out.returncode}:\n{text}")
    return out.stdout if check else text


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    return run(["kubectl", *args], input=input, check=check, timeout=timeout)


def get_json(*args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json"))


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, interval: float = 0.5):
    """Polls `check` until it returns a truthy value (returned) or `timeout` passes:
    then fails naming `what` and the last error or value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - reported below
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what}: not within {timeout} s (last: {last})")
        time.sleep(interval)


def fill(text: str, values: dict[str, str]) -> str:
    """Fills `${NAME}` placeholders of a fixture; every one must be known."""
    for k, v in values.items():
        text = text.replace("${" + k + "}", v)
    if "${" in text:
        start = text.index("${")
        raise StepFailed(f"fixture placeholder {text[start:text.index('}', start) + 1]} has no value")
    return text


def fixture_dir(name: str, values: dict[str, str], extra: dict[str, str] | None = None) -> Path:
    """e2e/fixtures/NAME with its placeholders filled, written to a directory of
    this run (what `kubectl apply -f` gets, and `tenantgate-gateway token --manifests`)."""
    out = WORK / "fixtures" / name
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((FIXTURES / name).glob("*.yaml")):
        (out / f.name).write_text(fill(f.read_text(), {**values, **(extra or {})}))
    return out


# ---------------------------------------------------------------------------
# The real node's network: how this suite reaches what runs in pods


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def node_netns() -> Path:
    """The network namespace the cluster's real node(s) and their pods live in (e2e/cluster/up)."""
    return Path(env("TENANTGATE_NODE_NETNS"))


def _enter_netns(path: Path) -> None:
    """Moves the calling thread (setns is per thread) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NodeAddress:
    """An address the node answers on, as a cloud node answers the instance metadata
    address: `ip` added to the loopback of the node's network namespace, with a TCP
    listener on each of `ports` that accepts and closes. Pods reach it through their
    default route (the node), so only a NetworkPolicy stands between them and it."""

    def __init__(self, ip: str, ports: tuple[int, ...]) -> None:
        self.ip, self.netns = ip, node_netns()
        run(["ip", "-n", self.netns.name, "addr", "add", f"{ip}/32", "dev", "lo"])
        self.sockets: list[socket.socket] = []
        ready: queue.Queue[OSError | None] = queue.Queue()
        threading.Thread(target=self._serve, args=(ports, ready), daemon=True).start()
        if (error := ready.get()) is not None:
            self.close()
            raise error

    def _serve(self, ports: tuple[int, ...], ready: queue.Queue) -> None:
        try:
            _enter_netns(self.netns)
            self.sockets = [socket.create_server((self.ip, p)) for p in ports]
        except OSError as e:
            ready.put(e)
            return
        ready.put(None)
        for s in self.sockets:
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    @staticmethod
    def _accept(server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept
            except OSError:
                pass
            s.close()
        run(["ip", "-n", self.netns.name, "addr", "del", f"{self.ip}/32", "dev", "lo"], check=False)


class NetnsForward:
    """127.0.0.1:<free port> on this machine, each connection carried to
    HOST:PORT inside the node's network namespace: this suite reaches
    ClusterIPs and pod IPs as a client inside the cluster would (kube-proxy's
    rules spread a Service's connections over its ready pods there). One thread
    enters the namespace and opens every outgoing connection; the listening
    socket stays on this machine's loopback."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._pending: queue.Queue[socket.socket | None] = queue.Queue()
        entered: queue.Queue[OSError | None] = queue.Queue()
        threading.Thread(target=self._dial, args=(node_netns(), entered), daemon=True).start()
        if (error := entered.get()) is not None:
            self.server.close()
            raise error
        threading.Thread(target=self._accept, daemon=True).start()

    def _dial(self, netns: Path, entered: queue.Queue) -> None:
        try:
            _enter_netns(netns)
        except OSError as e:
            entered.put(e)
            return
        entered.put(None)
        while (client := self._pending.get()) is not None:
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            threading.Thread(target=pair.pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client), daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._pending.put(conn)

    def close(self) -> None:
        self.server.close()
        self._pending.put(None)


class _Pair:
    """Two sockets copied into each other; both closed once both directions ended."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.sockets, self.lock, self.done = (a, b), threading.Lock(), 0

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            self.done += 1
            last = self.done == 2
        if last:
            for s in self.sockets:
                s.close()


def service_forward(namespace: str, name: str, port_name: str = "http") -> NetnsForward:
    """A forward to a Service's ClusterIP and port `port_name`."""
    svc = get_json("service", name, "-n", namespace)
    ports = [p["port"] for p in svc["spec"]["ports"] if p.get("name") == port_name]
    if not ports:
        raise StepFailed(f"service {namespace}/{name} has no port named {port_name}: {svc['spec']['ports']}")
    return NetnsForward(svc["spec"]["clusterIP"], ports[0])


def expose(host_url: str, port: int) -> str:
    """A URL (scheme, credentials and path kept) that pods use for a server of
    this machine's 127.0.0.1 (PostgreSQL, Redis of e2e/with-services): an
    address inside the node's namespace, listening on `port` (the port the
    tenants' NetworkPolicies open for that kind of server), that e2e/cluster/expose
    forwards to the server."""
    parts = urlsplit(host_url)
    address = run([str(ROOT / "e2e/cluster/expose"), f"{parts.hostname}:{parts.port}", str(port)]).strip()
    netloc = address if not parts.username else f"{parts.username}:{parts.password}@{address}"
    return urlunsplit(parts._replace(netloc=netloc))


def unexpose(host_url: str) -> None:
    """Takes the server of `expose(host_url, ...)` away from the pods, as an outage would:
    its open connections are closed and new ones refused until it is exposed again."""
    parts = urlsplit(host_url)
    run([str(ROOT / "e2e/cluster/expose"), "--stop", f"{parts.hostname}:{parts.port}"])


def pods_of(namespace: str, deployment: dict) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return get_json("pods", "-n", namespace, "-l", selector)["items"]


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def logs(namespace: str, selector: str) -> str:
    """The logs of every container of the pods `selector` picks, each line prefixed with its pod."""
    return kubectl("logs", "-n", namespace, "-l", selector, "--all-containers", "--prefix", "--tail=-1",
                   "--max-log-requests=20", check=False)


# ---------------------------------------------------------------------------
# What runs in the cluster

IMAGE_VERSION = os.environ.get("TENANTGATE_IMAGE_VERSION", "0.1.0")
GATEWAY_IMAGE = f"ghcr.io/tenantgate/gateway:{IMAGE_VERSION}"


def tag_image(image: str, new_name: str) -> None:
    """Gives an image the node has a second name, as a registry would serve a new release's tag."""
    run([str(ROOT / "e2e/cluster/load-images"), "--tag", image, new_name])
UPSTREAMS = "e2e-upstreams"


class MockLlm:
    """e2e/mock-llm as a pod behind Service mock-llm; /_control/last tells which credential it received."""

    in_cluster = f"http://mock-llm.{UPSTREAMS}.svc.cluster.local:8080"

    def __init__(self) -> None:
        self.forward = service_forward(UPSTREAMS, "mock-llm")
        self.url = self.forward.url

    def last(self, model: str) -> dict:
        return httpx.get(self.url + "/_control/last", params={"model": model}).json()

    def count(self, model: str) -> int:
        return httpx.get(self.url + "/_control/stats").json()["requests"].get(model, 0)


class McpEcho:
    """e2e/mcp-echo (rmcp) as a pod behind Service mcp-echo; /calls counts the tools/call it got."""

    in_cluster = f"http://mcp-echo.{UPSTREAMS}.svc.cluster.local:8080"

    def __init__(self) -> None:
        self.forward = service_forward(UPSTREAMS, "mcp-echo")
        self.url = self.forward.url

    def calls(self) -> int:
        return int(httpx.get(self.url + "/calls").text)

    def last_auth(self) -> str:
        return httpx.get(self.url + "/last-auth").text


class Upstreams:
    """The tenants' upstreams (e2e/fixtures/upstreams) as pods: mock-llm, mcp-echo
    and the reference server-everything, from the images of `make images`."""

    everything_in_cluster = f"http://everything.{UPSTREAMS}.svc.cluster.local:3001"

    def __init__(self) -> None:
        images = {
            "MOCK_LLM_IMAGE": f"tenantgate.dev/e2e/mock-llm:{IMAGE_VERSION}",
            "MCP_ECHO_IMAGE": f"tenantgate.dev/e2e/mcp-echo:{IMAGE_VERSION}",
            "EVERYTHING_IMAGE": f"tenantgate.dev/e2e/mcp-everything:{IMAGE_VERSION}",
            # One line of JSON, quoted in the fixture.
            "SERVICE_ACCOUNT_JWKS": json.dumps(json.loads(kubectl("get", "--raw", "/openid/v1/jwks"))),
        }
        kubectl("apply", "-f", str(fixture_dir("upstreams", images)))
        for name in ("mock-llm", "mcp-echo", "everything"):
            kubectl("rollout", "status", f"deployment/{name}", "-n", UPSTREAMS, "--timeout=180s", timeout=200)
        self.mock = MockLlm()
        self.echo = McpEcho()

    def close(self) -> None:
        self.mock.forward.close()
        self.echo.forward.close()


def rolled_out(namespace: str) -> bool:
    """Deployment gateway of `namespace` fully rolled out: every replica updated, ready, and no old one left."""
    d = get_json("deployment", "gateway", "-n", namespace)
    st, want = d["status"], d["spec"].get("replicas")
    state = (st.get("observedGeneration") == d["metadata"]["generation"], st.get("updatedReplicas"),
             st.get("readyReplicas"), st.get("replicas"))
    if state != (True, want, want, want):
        raise StepFailed(f"{namespace}/gateway: observed, updated, ready, replicas = {state}, want {want}")
    # Old pods still draining (terminating pods are not in the Deployment's counts) may still
    # hold connections: in-process MCP sessions (no Redis) live on the pod that opened them.
    pods = [p["metadata"]["name"] for p in pods_of(namespace, d)]
    if len(pods) != want:
        raise StepFailed(f"{namespace}/gateway: pods {pods} (old ones still draining), want {want}")
    return True


class Gateway:
    """A tenant's gateway as its clients in the cluster reach it: Service
    `gateway` of its namespace (kube-proxy spreads connections over the ready
    pods the operator's Deployment runs), forwarded to this machine's loopback."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.namespace = get_json("tenant", tenant)["status"]["namespace"]
        self.deployment = get_json("deployment", "gateway", "-n", self.namespace)
        labels = self.deployment["spec"]["selector"]["matchLabels"]
        self.selector = ",".join(f"{k}={v}" for k, v in labels.items())
        wait_for(f"{self.namespace}/gateway rolled out", lambda: rolled_out(self.namespace), 180)
        self.forward = service_forward(self.namespace, "gateway")
        self.url = self.forward.url
        # Probes and metrics: the Service's `metrics` port (the API port has no /readyz).
        self.ops = service_forward(self.namespace, "gateway", "metrics")
        self.ops_url = self.ops.url
        wait_for(f"{self.namespace}/gateway answering /readyz through its Service",
                 lambda: httpx.get(self.ops_url + "/readyz", timeout=5).status_code == 200, 120)

    def pods(self) -> list[dict]:
        return get_json("pods", "-n", self.namespace, "-l", self.selector)["items"]

    def pod_ids(self) -> set[tuple[str, str, int]]:
        """(name, uid, restarts) of each pod: a changed set means a restart or a rollout."""
        return {(p["metadata"]["name"], p["metadata"]["uid"],
                 sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", []))) for p in self.pods()}

    def logs(self) -> str:
        return logs(self.namespace, self.selector)

    def stop(self) -> None:
        self.forward.close()
        self.ops.close()


OPERATOR_SELECTOR = "app.kubernetes.io/name=tenantgate-operator"


class Operator:
    """The operator as the chart's (or install.yaml's) Deployment runs it: its
    pods on the real node, authenticated as the chart's ServiceAccount through
    the token the kubelet projects, so the chart's RBAC is what allows or
    refuses every request."""

    def __init__(self) -> None:
        deployment = get_json("deployment", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)
        (deployment,) = deployment["items"]
        spec = deployment["spec"]["template"]["spec"]
        if spec.get("serviceAccountName") != OPERATOR_ACCOUNT:
            raise StepFailed(f"the operator Deployment runs as {spec.get('serviceAccountName')}, not {OPERATOR_ACCOUNT}")
        self.name = deployment["metadata"]["name"]
        (container,) = spec["containers"]
        self.metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        kubectl("rollout", "status", f"deployment/{self.name}", "-n", OPERATOR_NAMESPACE, "--timeout=180s", timeout=200)

    def pods(self) -> list[dict]:
        return get_json("pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)["items"]

    def metrics(self) -> list[str]:
        """/metrics of every ready operator pod (the leader and its standbys)."""
        out = []
        for pod in self.pods():
            if not is_ready(pod):
                continue
            forward = NetnsForward(pod["status"]["podIP"], self.metrics_port)
            try:
                out.append(httpx.get(forward.url + "/metrics", timeout=10).text)
            finally:
                forward.close()
        return out

    def logs(self) -> str:
        return logs(OPERATOR_NAMESPACE, OPERATOR_SELECTOR)


NETCHECK_IMAGE = f"tenantgate.dev/e2e/netcheck:{IMAGE_VERSION}"


class ClientPod:
    """A pod of the netcheck image (a static busybox) in `namespace` with `labels`,
    for "can this pod open a TCP connection there" through kubectl exec. It is
    never Ready (its readiness probe fails), so no Service its labels match ever
    routes to it, and it carries no pod-template-hash, so no ReplicaSet adopts it:
    with a gateway's labels it is fenced by the gateway's NetworkPolicy and
    nothing else changes."""

    def __init__(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.namespace, self.name = namespace, name
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"e2e.tenantgate.dev/netcheck": "true",
                                                                          **(labels or {})}},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "netcheck", "image": NETCHECK_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": command or ["sleep", "3600"],
                    # A server (`command`) is ready when it runs; a client never is.
                    "readinessProbe": {"exec": {"command": ["sh", "-c", "exit 0" if command else "exit 1"]},
                                       "periodSeconds": 30},
                    # A request, so an HPA whose selector its labels match can still compute utilization.
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }
        kubectl("apply", "-f", "-", input=json.dumps(pod))
        wait_for(f"pod {namespace}/{name} running",
                 lambda: get_json("pod", name, "-n", namespace)["status"].get("phase") == "Running", 120)

    def connects(self, host: str, port: int) -> bool:
        """Whether a TCP connection from this pod to host:port is accepted within 3 s."""
        code = run(["kubectl", "exec", "-n", self.namespace, self.name, "--", "sh", "-c",
                    f"nc -w 3 {host} {port} </dev/null >/dev/null 2>&1; echo $?"], check=False, timeout=30)
        return code.strip().splitlines()[-1:] == ["0"]

    def delete(self) -> None:
        kubectl("delete", "pod", self.name, "-n", self.namespace, "--ignore-not-found", "--wait=false")


def mint_token(gateway_bin: str, manifests: Path, key: Path, subject: str, roles: tuple[str, ...] = ()) -> str:
    cmd = [gateway_bin, "token", "--manifests", str(manifests), "--key", str(key), "--subject", subject]
    if roles:
        cmd += ["--roles", ",".join(roles)]
    return run(cmd).strip()
