"""Shared by e2e/chaos/run and e2e/soak/run: release binaries, processes
stopped by PID, tenants for local gateways (mock-llm upstream, mcp-echo MCP
server, PostgreSQL and Redis of e2e/with-services), tokens, MCP sessions,
vegeta, and /proc figures. Only 127.0.0.1 is ever a target."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TENANTGATE_CACHE", Path.home() / ".cache/tenantgate"))
CARGO = os.environ.get("CARGO", "cargo")
SIGNING_KEY = ROOT / "manifests/examples/quickstart/dev-signing-key.pem"


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Processes started here; `stop_all` stops each by its PID (TERM, then KILL)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, **kwargs) -> subprocess.Popen:
        p = subprocess.Popen([str(c) for c in cmd], **kwargs)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig=signal.SIGTERM) -> None:
        if p.poll() is None:
            p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def cargo_release_bins(*packages: str, into: Path, bins: tuple[str, ...] = ()) -> dict[str, str]:
    """Builds the packages in release mode; their executables by target name,
    copied into `into` (so a later build with other features, which replaces
    the file in the target dir, cannot change what this run starts)."""
    cmd = [CARGO, "build", "--release", "-q", "--message-format=json"]
    for p in packages:
        cmd += ["-p", p]
    for b in bins:
        cmd += ["--bin", b]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            into.mkdir(parents=True, exist_ok=True)
            copy = into / m["target"]["name"]
            shutil.copy2(m["executable"], copy)
            found[m["target"]["name"]] = str(copy)
    return found


def vegeta_bin() -> Path:
    """vegeta from the pinned module in e2e/bench/tools/vegeta, built into the cache (as make bench-gateway does)."""
    tools = ROOT / "e2e/bench/tools/vegeta"
    stamp = subprocess.run(["sha256sum", str(tools / "go.sum")], capture_output=True, text=True).stdout.split()[0][:16]
    out = CACHE / "bin" / f"vegeta-{stamp}"
    if not out.exists():
        log(f"building vegeta into {out}")
        gobin = CACHE / "gobin-vegeta"
        subprocess.run(["go", "install", "github.com/tsenart/vegeta/v12"], cwd=tools, check=True,
                       env=dict(os.environ, GOBIN=str(gobin), GOFLAGS="-mod=mod"))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(gobin / "vegeta"), out)
    return out


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 10):
    """(status, headers, body bytes); status 0 with the error text when no response came."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if isinstance(body, (dict, list)):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except Exception as e:  # connection refused, reset, timeout, broken chunked body
        return 0, {}, f"{type(e).__name__}: {e}".encode()


def wait_until(pred, what: str, timeout: float = 60) -> float:
    """Polls pred until it is true; the seconds it took. Raises after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if pred():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout:.0f}s")


def quickstart_jwks() -> str:
    for f in sorted((ROOT / "manifests/examples/quickstart").glob("*.yaml")):
        text = f.read_text()
        if "jwks.json: '" in text:
            start = text.index("jwks.json: '") + len("jwks.json: '")
            return text[start:text.index("'", start)]
    raise RuntimeError("no JWKS in the quickstart")


def tenant_manifests(name: str, upstream: str, mcp_url: str | None, postgres: str | None, redis: str | None,
                     limits: str = "") -> str:
    """A tenant whose model `chat` goes to mock-llm's `mock-1` (and `m-<name>`
    models for scripted faults: see `models`), with the McpConnection `echo`
    and PostgreSQL/Redis storage when given. JWTs from the quickstart key."""
    ns = f"tg-{name}"
    storage = ""
    if postgres or redis:
        storage = "  storage:\n"
        if redis:
            storage += "    redis: { urlSecretRef: { name: services, key: redis } }\n"
        if postgres:
            storage += "    database: { urlSecretRef: { name: services, key: postgres } }\n"
    docs = f"""apiVersion: v1
kind: Secret
metadata: {{ name: jwks, namespace: {ns} }}
stringData:
  jwks.json: '{quickstart_jwks()}'
---
apiVersion: v1
kind: Secret
metadata: {{ name: upstream-key, namespace: {ns} }}
stringData:
  apiKey: soak-key
---
apiVersion: v1
kind: Secret
metadata: {{ name: services, namespace: {ns} }}
stringData:
  redis: '{redis or ""}'
  postgres: '{postgres or ""}'
---
apiVersion: tenantgate.dev/v1alpha1
kind: Tenant
metadata: {{ name: {name} }}
spec:
  namespace: {ns}
  auth:
    jwt:
      issuer: https://quickstart.tenantgate.local
      audiences: [tenantgate]
      jwksSecretRef: {{ name: jwks, key: jwks.json }}
      adminRoles: [tenant-admin]
  providers:
    - name: mock-llm
      type: openai
      baseUrl: {upstream}/v1
      apiKeySecretRef: {{ name: upstream-key, key: apiKey }}
  models:
    - name: chat
      targets: [ {{ provider: mock-llm, model: mock-1 }} ]
    - name: faulty
      targets: [ {{ provider: mock-llm, model: faulty-{name} }} ]
  routing:
    maxRetries: 1
    initialBackoffMs: 10
    maxBackoffMs: 200
    connectTimeoutMs: 500
    firstByteTimeoutMs: 2000
    totalTimeoutMs: 5000
    circuitBreaker: {{ failureThreshold: 5, openSeconds: 2 }}
{limits}{storage}  network:
    allowLocalUpstreams: true
"""
    if mcp_url:
        docs += f"""---
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: echo, namespace: {ns} }}
spec:
  transport: streamableHttp
  url: {mcp_url}
  tools: {{ prefix: echo, deny: ["secret_*"] }}
  timeoutSeconds: 10
"""
    return docs


class Gateway:
    """A gateway in local mode over its own manifests directory."""

    def __init__(self, procs: Procs, binary: str, workdir: Path, name: str, manifests: str,
                 rust_log: str = "warn"):
        self.name, self.binary, self.procs = name, binary, procs
        self.dir = workdir / name
        (self.dir / "manifests").mkdir(parents=True, exist_ok=True)
        (self.dir / "manifests/tenant.yaml").write_text(manifests)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.dir / "gateway.log"
        self.rust_log = rust_log
        self.proc = None
        self.start()
        self.token = self.mint("soak-user")
        self.admin_token = self.mint("soak-admin", roles="tenant-admin")

    def start(self) -> None:
        self.proc = self.procs.start(
            [self.binary, "--manifests", self.dir / "manifests", "--state-dir", self.dir / "state",
             "--listen", f"127.0.0.1:{self.port}", "--shutdown-delay-ms", "0"],
            env=dict(os.environ, RUST_LOG=self.rust_log, MALLOC_ARENA_MAX="2"),
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a"))
        wait_until(lambda: http("GET", self.url + "/readyz")[0] == 200, f"gateway {self.name} ready", 60)

    def mint(self, subject: str, roles: str = "") -> str:
        cmd = [self.binary, "token", "--manifests", str(self.dir / "manifests"), "--key", str(SIGNING_KEY),
               "--kid", "quickstart-dev", "--subject", subject, "--ttl-secs", "86400"]
        if roles:
            cmd += ["--roles", roles]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def metric(self, name: str, labels: str = "") -> float:
        text = http("GET", self.url + "/metrics")[2].decode(errors="replace")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name):].startswith((" ", "{"))) and labels in line:
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except ValueError:
                    pass
        return total

    def mcp_session(self) -> str:
        """An initialized MCP session through /mcp; its id."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json, text/event-stream"}
        status, h, body = http("POST", self.url + "/mcp", {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "tenantgate-e2e", "version": "1"}}}, headers)
        if status != 200:
            raise RuntimeError(f"MCP initialize on {self.name}: {status} {body[:200]!r}")
        sid = {k.lower(): v for k, v in h.items()}["mcp-session-id"]
        headers["Mcp-Session-Id"] = sid
        http("POST", self.url + "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
        return sid

    def mcp(self, sid: str, method: str, params: dict, request_id: str | None = None, timeout: float = 15):
        """One MCP request in session sid: (status, the JSON-RPC response or None)."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json, text/event-stream",
                   "Mcp-Session-Id": sid}
        if request_id:
            headers["x-request-id"] = request_id
        req = urllib.request.Request(self.url + "/mcp", method="POST", headers=headers, data=json.dumps(
            {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode())
        req.add_header("Content-Type", "application/json")
        deadline = time.monotonic() + timeout
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if "text/event-stream" not in r.headers.get("Content-Type", ""):
                    return r.status, json.loads(r.read() or b"null")
                # An SSE stream may stay open (keep-alive comments) after its answer:
                # read events until the JSON-RPC response, never to the end.
                for raw in r:
                    line = raw.decode(errors="replace").strip()
                    if line.startswith("data:") and line[5:].strip().startswith("{"):
                        message = json.loads(line[5:])
                        if "id" in message:
                            return r.status, message
                    if time.monotonic() > deadline:
                        break
                return r.status, None
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, None
        except Exception:  # connection refused, reset, timeout
            return 0, None


def create_database(postgres_url: str, name: str) -> str:
    """A new empty database on the server of postgres_url; its URL."""
    subprocess.run(["psql", "-q", postgres_url, "-c", f"CREATE DATABASE {name}"], check=True,
                   capture_output=True)
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def psql(url: str, sql: str) -> str:
    return subprocess.run(["psql", "-qtA", url, "-c", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def services(command: str) -> None:
    """Runs an e2e/lib/common.sh function against the services of this run."""
    subprocess.run(["bash", "-c", f"source e2e/lib/common.sh && {command}"], cwd=ROOT, check=True)


def postgres_pids() -> list[int]:
    """The postmaster of e2e/services and its children (the backends)."""
    run = os.environ["TENANTGATE_RUN"]
    master = int((Path(run) / "services/postgres.pid").read_text().split()[0])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master] + [int(c) for c in children]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def require_services() -> dict:
    try:
        return {"postgres": os.environ["TENANTGATE_POSTGRES_URL"], "redis": os.environ["TENANTGATE_REDIS_URL"]}
    except KeyError as e:
        raise SystemExit(f"{e.args[0]} is not set: run under e2e/with-services (the make target does)")
