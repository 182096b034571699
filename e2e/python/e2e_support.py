"""Helpers of the platform scenarios (test_platform.py): kubectl and helm as a
platform team runs them, processes started the way their pods would run them,
and bounded waits that fail with the logs that explain why.

Nothing here talks to anything but 127.0.0.1: the local control plane of
e2e/with-cluster (KUBECONFIG) and PostgreSQL/Redis of e2e/with-services.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

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

# Log files of processes this run started, by name, for failure reports.
LOGS: dict[str, Path] = {}


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: run this suite with `make e2e` (e2e/with-services e2e/with-cluster ...)")
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({e})"
    return "\n".join(text[-lines:])


def apiserver_log() -> Path:
    """kube-apiserver's log of the cluster KUBECONFIG points at (e2e/cluster/up's layout)."""
    return Path(env("KUBECONFIG")).parent / "logs/kube-apiserver.log"


def diagnostics() -> str:
    """The tails of every log worth reading when a step fails."""
    parts = []
    for name, path in LOGS.items():
        parts.append(f"===== {name} ({path}) =====\n{tail(path)}")
    parts.append(f"===== kube-apiserver ({apiserver_log()}) =====\n{tail(apiserver_log(), 25)}")
    try:
        parts.append("===== kubectl get tenantgate,deploy,hpa -A =====\n" + kubectl("get", "tenantgate,deploy,hpa", "-A"))
    except StepFailed as e:
        parts.append(str(e))
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
# Processes


class Process:
    """A process of this run with its log file; stopped by PID."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None, stdout=None):
        self.name = name
        self.log = WORK / f"{name}.log"
        LOGS[name] = self.log
        self.proc = subprocess.Popen(
            cmd,
            env=env if env is not None else dict(os.environ),
            stdout=stdout if stdout is not None else open(self.log, "ab"),
            stderr=open(self.log, "ab"),
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own session: the group holds only what it started (unshare's child).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def wait_http_ok(url: str, proc: Process, timeout: float = 30) -> None:
    def ok():
        if not proc.alive():
            raise StepFailed(f"{proc.name} exited ({proc.proc.returncode}); log:\n{tail(proc.log)}")
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_for(f"{proc.name} answering 200 at {url}", ok, timeout)
    except StepFailed as e:
        raise StepFailed(f"{e}\n{proc.name} log:\n{tail(proc.log)}") from None


def listening_line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("listening on "):
        raise StepFailed(f"expected 'listening on ADDR', got {line!r}")
    return "http://" + line.removeprefix("listening on ")


class MockLlm:
    """e2e/mock-llm on a free port; /_control/last tells which credential it received."""

    def __init__(self) -> None:
        self.p = Process("mock-llm", [os.environ["MOCK_LLM_BIN"], "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE)
        self.url = listening_line(self.p.proc)

    def last(self, model: str) -> dict:
        return httpx.get(self.url + "/_control/last", params={"model": model}).json()

    def count(self, model: str) -> int:
        return httpx.get(self.url + "/_control/stats").json()["requests"].get(model, 0)


class McpEcho:
    """e2e/mcp-echo (rmcp) over streamable HTTP; /calls counts the tools/call it got."""

    def __init__(self) -> None:
        self.p = Process("mcp-echo", [os.environ["MCP_ECHO_BIN"], "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE)
        self.url = listening_line(self.p.proc)

    def calls(self) -> int:
        return int(httpx.get(self.url + "/calls").text)

    def last_auth(self) -> str:
        return httpx.get(self.url + "/last-auth").text


class Everything:
    """@modelcontextprotocol/server-everything (npm, pinned in e2e/lib/mcp-everything) over streamable HTTP."""

    def __init__(self) -> None:
        js = run([str(ROOT / "e2e/lib/mcp-everything")], timeout=300).strip()
        port = free_port()
        self.p = Process("server-everything", ["node", js, "streamableHttp"], env=dict(os.environ, PORT=str(port)))
        self.url = f"http://127.0.0.1:{port}"

        def up():
            if not self.p.alive():
                raise StepFailed(f"server-everything exited; log:\n{tail(self.p.log)}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return True
            except httpx.TransportError:
                return False

        wait_for("server-everything listening", up, 60, 0.2)


# ---------------------------------------------------------------------------
# Pods run as processes


def pods_of(namespace: str, deployment: dict) -> list[dict]:
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return get_json("pods", "-n", namespace, "-l", selector)["items"]


def apiserver() -> tuple[str, str]:
    """Host and port of the API server of KUBECONFIG (the local control plane)."""
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").strip()
    host_port = server.removeprefix("https://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    return host, port


def container_env(container: dict, pod: dict, overrides: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would set it (fieldRefs resolved
    against `pod`, and KUBERNETES_SERVICE_HOST/PORT, here the local API server's
    address), with `overrides` on top; of this machine's only PATH and LANG (no
    HOME: a pod's process must not depend on one)."""
    out = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    out["KUBERNETES_SERVICE_HOST"], out["KUBERNETES_SERVICE_PORT"] = apiserver()
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
            continue
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field == "metadata.name":
            out[e["name"]] = pod["metadata"]["name"]
        elif field == "metadata.namespace":
            out[e["name"]] = pod["metadata"]["namespace"]
        else:
            raise StepFailed(f"container env {e['name']}: {e.get('valueFrom')} is not supported by the e2e pod runner")
    out.update(overrides)
    return out


def atomic_volume(dest: Path, files: dict[str, bytes]) -> bool:
    """Writes `files` (relative paths) into `dest` the way the kubelet's atomic
    writer does: a fresh `..<timestamp>` dir, the `..data` symlink swapped to it
    with one rename, and top-level entries that are symlinks through `..data`.
    Returns False when the content is already what is there."""
    dest.mkdir(parents=True, exist_ok=True)
    current = dest / "..data"
    if current.exists():
        old = {str(p.relative_to(current.resolve())): p.read_bytes() for p in current.resolve().rglob("*") if p.is_file()}
        if old == files:
            return False
    stamp = dest / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    for rel, data in files.items():
        f = stamp / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        f.chmod(0o440)
    tmp = dest / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(stamp.name)
    previous = current.resolve() if current.exists() else None
    os.rename(tmp, current)
    for top in {rel.split("/")[0] for rel in files}:
        link = dest / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    if previous is not None and previous != stamp:
        shutil.rmtree(previous, ignore_errors=True)
    return True


class GatewayPod:
    """A tenant's gateway run as its pod would run it: the Deployment's container
    args and env, the ConfigMap and Secrets the operator wrote read back from the
    API server and laid out as the kubelet lays out the configMap and projected
    volumes, mounted at the Deployment's mountPaths in a private mount namespace
    (unshare), so the rendered config's absolute paths resolve exactly as in the
    pod. Only the listen address changes: a free port on 127.0.0.1. The mount
    points (/etc/tenantgate, /var/run/secrets/tenantgate, /var/lib/tenantgate,
    /var/run/secrets/kubernetes.io/serviceaccount) are created on this machine as empty directories when missing; nothing is
    ever written into them outside the gateway's own mount namespace."""

    def __init__(self, tenant: str, gateway_bin: str) -> None:
        self.tenant = tenant
        t = get_json("tenant", tenant)
        self.namespace = t["status"]["namespace"]
        self.dir = WORK / f"pod-{tenant}"
        self.deployment = get_json("deployment", "gateway", "-n", self.namespace)
        spec = self.deployment["spec"]["template"]["spec"]
        (self.container,) = [c for c in spec["containers"] if c["name"] == "gateway"]
        self.volumes = {v["name"]: v for v in spec["volumes"]}
        pods = wait_for(f"pods of {self.namespace}/gateway", lambda: pods_of(self.namespace, self.deployment), 60)
        self.pod = pods[0]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sync()
        args = list(self.container.get("args", []))
        if "--listen" not in args:
            raise StepFailed(f"the gateway container has no --listen argument: {args}")
        args[args.index("--listen") + 1] = f"127.0.0.1:{self.port}"
        mounts = []
        for m in self.container["volumeMounts"]:
            src = self.dir / "volumes" / m["name"]
            src.mkdir(parents=True, exist_ok=True)
            mounts.append((str(src), m["mountPath"]))
        # /tmp last: the sources above live under it.
        mounts.sort(key=lambda m: m[1] == "/tmp")
        # The program is opened before the mounts and run from that descriptor: the
        # pod's /tmp (an emptyDir) hides the host's /tmp, where a checkout may live.
        script = 'set -e\nexec 9<"$1"\nshift\n' + "".join(f'mount --bind "{src}" "{dst}"\n' for src, dst in mounts)
        for _, dst in mounts:
            # The mount point must exist on the host (an empty directory) before unshare binds onto it.
            Path(dst).mkdir(parents=True, exist_ok=True)
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script + 'exec /proc/self/fd/9 "$@"', "sh"]
        command = self.container.get("command") or [gateway_bin]
        program = shutil.which(command[0]) or command[0]
        self.process = Process(
            f"gateway-{tenant}",
            [*cmd, program, *command[1:], *args],
            env=container_env(self.container, self.pod, {}),
        )
        wait_http_ok(self.url + "/readyz", self.process)

    def _volume_files(self, volume: dict) -> dict[str, bytes]:
        if "configMap" in volume:
            cm = get_json("configmap", volume["configMap"]["name"], "-n", self.namespace)
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in cm.get("data", {})]
            return {i["path"]: cm["data"][i["key"]].encode() for i in items}
        if "projected" in volume:
            files = {}
            for source in volume["projected"]["sources"]:
                if "secret" in source:
                    s = source["secret"]
                    secret = get_json("secret", s["name"], "-n", self.namespace)
                    for i in s["items"]:
                        files[i["path"]] = base64.b64decode(secret["data"][i["key"]])
                elif "configMap" in source:
                    c = source["configMap"]
                    cm = get_json("configmap", c["name"], "-n", self.namespace)
                    for i in c["items"]:
                        files[i["path"]] = cm["data"][i["key"]].encode()
                elif "downwardAPI" in source:
                    for i in source["downwardAPI"]["items"]:
                        field = i.get("fieldRef", {}).get("fieldPath")
                        if field != "metadata.namespace":
                            raise StepFailed(f"downwardAPI {field} is not supported by the e2e pod runner")
                        files[i["path"]] = self.pod["metadata"]["namespace"].encode()
                elif "serviceAccountToken" in source:
                    files[source["serviceAccountToken"]["path"]] = self._token(source["serviceAccountToken"])
                else:
                    raise StepFailed(f"projected source {sorted(source)} is not supported by the e2e pod runner")
            return files
        return {}

    def _token(self, source: dict) -> bytes:
        """A token of the pod's ServiceAccount bound to the pod, as the kubelet
        requests it (TokenRequest); requested again at 80% of its life, as the
        kubelet rotates it, and kept until then (a sync must not churn it)."""
        seconds = int(source.get("expirationSeconds", 3600))
        cached = getattr(self, "_token_cache", None)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        cmd = ["create", "token", self.pod["spec"].get("serviceAccountName", "default"), "-n", self.namespace,
               "--bound-object-kind", "Pod", "--bound-object-name", self.pod["metadata"]["name"],
               "--duration", f"{seconds}s"]
        if source.get("audience"):
            cmd += ["--audience", source["audience"]]
        token = kubectl(*cmd).strip().encode()
        self._token_cache = (token, time.monotonic() + seconds * 0.8)
        return token

    def sync(self) -> bool:
        """One kubelet sync of the configMap and projected volumes: re-reads them
        from the API server and swaps them in atomically when they changed."""
        changed = False
        for name, volume in self.volumes.items():
            if "configMap" in volume or "projected" in volume:
                changed |= atomic_volume(self.dir / "volumes" / name, self._volume_files(volume))
        return changed

    def stop(self) -> None:
        self.process.stop()


class Operator:
    """The operator as the chart's Deployment would run it: its container's args
    and env read back from the API server, authenticated with a token of the
    chart's ServiceAccount (e2e/cluster/kubeconfig-for-sa), never as admin, so
    the chart's RBAC is what allows or refuses every request."""

    def __init__(self, operator_bin: str) -> None:
        deployment = get_json("deployment", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=tenantgate-operator")
        (deployment,) = deployment["items"]
        spec = deployment["spec"]["template"]["spec"]
        if spec.get("serviceAccountName") != OPERATOR_ACCOUNT:
            raise StepFailed(f"the operator Deployment runs as {spec.get('serviceAccountName')}, not {OPERATOR_ACCOUNT}")
        (container,) = spec["containers"]
        pod = wait_for("the operator Deployment's pods", lambda: pods_of(OPERATOR_NAMESPACE, deployment), 60)[0]
        kubeconfig = WORK / "operator.kubeconfig"
        kubeconfig.write_text(
            run([str(ROOT / "e2e/cluster/kubeconfig-for-sa"), OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, "2h"])
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        environment = container_env(
            container,
            pod,
            {"KUBECONFIG": str(kubeconfig), "TENANTGATE_METRICS_ADDR": f"127.0.0.1:{port}", "RUST_LOG": "info,kube=warn"},
        )
        self.process = Process("operator", [operator_bin, *container.get("args", [])], env=environment)
        wait_http_ok(self.url + "/readyz", self.process)

    def stop(self) -> None:
        self.process.stop()


def mint_token(gateway_bin: str, manifests: Path, key: Path, subject: str, roles: tuple[str, ...] = ()) -> str:
    cmd = [gateway_bin, "token", "--manifests", str(manifests), "--key", str(key), "--subject", subject]
    if roles:
        cmd += ["--roles", ",".join(roles)]
    return run(cmd).strip()
