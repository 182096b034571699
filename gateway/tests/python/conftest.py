"""Starts e2e/mock-llm and the gateway (local mode, the test tenant of
gateway/tests/fixtures/tenant.yaml.tmpl) as processes on free 127.0.0.1 ports."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(os.environ.get("TENANTGATE_ROOT", Path(__file__).resolve().parents[3]))
GATEWAY_BIN = os.environ["GATEWAY_BIN"]
MOCK_LLM_BIN = os.environ["MOCK_LLM_BIN"]
MCP_ECHO_BIN = os.environ["MCP_ECHO_BIN"]
QUICKSTART = ROOT / "manifests/examples/quickstart"
DEV_KEY = QUICKSTART / "dev-signing-key.pem"
FOREIGN_KEY = ROOT / "gateway/tests/fixtures/foreign-signing-key.pem"
# The Entra ID application and the workload identity pool provider mock-llm knows
# (the fixture's azure-entra, azure-federated and vertex-federated providers use them).
AZURE_CLIENT_ID = "gateway-app"
AZURE_CLIENT_SECRET = "entra-s3cret"
WORKLOAD_POOL = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/tenantgate/providers/test-cluster"
OTHER_POOL = WORKLOAD_POOL.replace("/tenantgate/", "/other/")
# The audiences of the projected service account tokens the fixture's providers read:
# Entra ID's token exchange, the pool providers' default allowed audience (https: + name), and AWS STS.
IDENTITY_AUDIENCES = ("api://AzureADTokenExchange", "https:" + WORKLOAD_POOL, "https:" + OTHER_POOL, "sts.amazonaws.com")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quickstart_jwks() -> str:
    for f in sorted(QUICKSTART.glob("*.yaml")):
        text = f.read_text()
        marker = "jwks.json: '"
        if marker in text:
            start = text.index(marker) + len(marker)
            return text[start : text.index("'", start)]
    raise RuntimeError("no JWKS in the quickstart example")


def identity_slug(audience: str) -> str:
    """The directory of `audience`'s projected token under the identity root (crds/src/render.rs)."""
    return hashlib.sha256(audience.encode()).hexdigest()[:16]


def service_account_key(token_uri: str) -> str:
    """A Google service account key file (JSON) for the quickstart's dev key,
    whose public half mock-llm's `/token` trusts (`--google-jwks`)."""
    return json.dumps({
        "type": "service_account", "project_id": "tenantgate-test", "private_key_id": "quickstart-dev",
        "private_key": DEV_KEY.read_text(), "client_email": "gateway@tenantgate-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })


# The access key of the fixture's Secret aws-keys, which mock-llm's Bedrock accepts.
AWS_KEY_ID = "AKIDTENANTGATETEST"
AWS_SECRET = "tenantgate/test+SECRET/key"


class Upstream:
    """A running mock-llm and its control API."""

    def __init__(self) -> None:
        self.jwks = Path(tempfile.mkdtemp(prefix="tg-mock-llm-")) / "google-jwks.json"
        self.jwks.write_text(quickstart_jwks())
        self.proc = subprocess.Popen(
            [MOCK_LLM_BIN, "--listen", "127.0.0.1:0", "--tokens", "8", "--google-jwks", str(self.jwks),
             "--bedrock-region", "us-east-1", "--aws-access-key-id", AWS_KEY_ID,
             "--aws-secret-access-key", AWS_SECRET, "--bedrock-api-key", "key-one",
             "--aws-oidc-jwks", str(self.jwks),
             # The projected tokens conftest writes are signed with the quickstart key too.
             "--identity-jwks", str(self.jwks), "--azure-client-id", AZURE_CLIENT_ID,
             "--azure-client-secret", AZURE_CLIENT_SECRET, "--google-workload-pool", WORKLOAD_POOL],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline().strip()
        self.url = "http://" + line.removeprefix("listening on ")
        self.http = httpx.Client(base_url=self.url)

    def script(self, model: str, steps: list, default: dict | None = None) -> None:
        self.http.post("/_control/script", json={"model": model, "steps": steps, "default": default}).raise_for_status()

    def count(self, model: str) -> int:
        return self.http.get("/_control/stats").json()["requests"].get(model, 0)

    def last(self, model: str) -> dict:
        return self.http.get("/_control/last", params={"model": model}).json()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Echo:
    """e2e/mcp-echo (an rmcp MCP server) over streamable HTTP, with its call counter."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([MCP_ECHO_BIN, "--listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE, text=True)
        self.url = "http://" + self.proc.stdout.readline().strip().removeprefix("listening on ")

    def calls(self) -> int:
        return int(httpx.get(self.url + "/calls").text)

    def cancelled(self) -> int:
        return int(httpx.get(self.url + "/cancelled").text)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def authed_connection(name: str, url: str, *, secret: str, string_data: str, auth: str) -> str:
    """Manifests of the McpConnection `name` in tg-test (streamable HTTP to
    `url`, its tools prefixed with its name, a 5 s timeout) whose `spec.auth` is
    the YAML `auth`, and of the Secret `secret` (its stringData the YAML flow
    mapping `string_data`) that `auth` takes its credential from."""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{ name: {secret}, namespace: tg-test }}
stringData: {string_data}
---
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: {name}, namespace: tg-test }}
spec:
  transport: streamableHttp
  url: {url}
  auth:
{textwrap.indent(textwrap.dedent(auth).strip(), "    ")}
  tools: {{ prefix: {name} }}
  timeoutSeconds: 5
"""


@pytest.fixture(scope="module")
def echo():
    """One e2e/mcp-echo per test module."""
    e = Echo()
    yield e
    e.stop()


class Gateway:
    """A running gateway over a temporary manifests directory."""

    def __init__(self, upstream: Upstream, extra_manifests: str = "", extra_args: tuple[str, ...] = (),
                 log: Path | None = None, log_level: str | None = None, ops_listener: bool = False,
                 port: int | None = None, tenant_spec: str = "", issuer: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tg-gw-py-"))
        manifests = self.dir / "manifests"
        manifests.mkdir()
        template = (ROOT / "gateway/tests/fixtures/tenant.yaml.tmpl").read_text()
        text = (
            template.replace("${UPSTREAM}", upstream.url)
            .replace("${DEAD}", f"http://127.0.0.1:{free_port()}")
            .replace("${JWKS}", quickstart_jwks())
            .replace("${SERVICE_ACCOUNT}", service_account_key(upstream.url + "/token"))
        )
        # `issuer`: the tenant's identity provider, instead of the fixture's https://issuer.test.
        if issuer:
            assert "issuer: https://issuer.test\n" in text, "the fixture's issuer moved"
            text = text.replace("issuer: https://issuer.test\n", f"issuer: {issuer}\n", 1)
        # `tenant_spec`: more lines of the Tenant's spec (indented two spaces).
        assert "\nspec:\n" in text, "the fixture's Tenant spec moved"
        text = text.replace("\nspec:\n", "\nspec:\n" + tenant_spec, 1)
        (manifests / "tenant.yaml").write_text(text)
        if extra_manifests:
            (manifests / "extra.yaml").write_text(extra_manifests)
        self.manifests = manifests
        self.write_projected_tokens()
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        # `ops_listener`: probes and metrics on a port of their own (`--ops-listen`), as in a cluster.
        self.ops_url = self.url
        if ops_listener:
            self.ops_url = f"http://127.0.0.1:{free_port()}"
            extra_args = ("--ops-listen", self.ops_url.removeprefix("http://"), *extra_args)
        env = dict(os.environ, RUST_LOG=log_level or os.environ.get("GATEWAY_LOG", "warn"))
        # `log`: the gateway's stdout and stderr go to this file (for tests that read its logs).
        out = open(log, "w") if log else None
        self.proc = subprocess.Popen(
            [GATEWAY_BIN, "--manifests", str(manifests), "--state-dir", str(self.dir / "state"),
             "--listen", f"127.0.0.1:{port}", "--shutdown-delay-ms", "0", *extra_args],
            env=env, stdout=out, stderr=out,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.ops_url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("the gateway did not become ready")
        self.token = self.mint()

    def write_projected_tokens(self, ttl: int = 3600) -> None:
        """What the kubelet does in a cluster: a service account token per audience the
        config reads, at STATE_DIR/identity/<slug>/token (local mode's identity root)."""
        for audience in IDENTITY_AUDIENCES:
            token = self.mint("--audience", audience, "--issuer", "https://kubernetes.default.svc",
                              "--subject", "system:serviceaccount:tg-test:gateway", "--ttl-secs", str(ttl))
            path = self.dir / "state" / "identity" / identity_slug(audience) / "token"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(token)

    def mint(self, *extra: str, key: Path = DEV_KEY) -> str:
        out = subprocess.run(
            [GATEWAY_BIN, "token", "--manifests", str(self.manifests), "--key", str(key), "--kid", "quickstart-dev", *extra],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.token, **kwargs)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def upstream():
    u = Upstream()
    yield u
    u.stop()


@pytest.fixture(scope="session")
def gateway(upstream):
    g = Gateway(upstream)
    yield g
    g.stop()


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return gateway.client()


def debug_log_of_one_chat(tmp_path: Path, upstream: "Upstream", model: str) -> str:
    """The debug-level log of a gateway of its own that answered one chat request on `model`."""
    log = tmp_path / "gateway.log"
    g = Gateway(upstream, log=log, log_level="debug")
    try:
        r = g.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}])
        assert r.choices[0].message.content.startswith("Hello from the Tenantgate")
        time.sleep(0.2)
    finally:
        g.stop()
    return log.read_text()


def error_body(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str), body
    return body["error"]


def refused_credential(upstream: "Upstream", log: Path, refused: str, *working: str) -> tuple[httpx.Response, str]:
    """A gateway of its own logging at debug into `log`: the answer to a chat request for the
    model `refused` (whose provider's credential is refused), after which each `working` model
    answers; and the log's text once the gateway stopped."""
    g = Gateway(upstream, log=log, log_level="debug")
    try:
        r = httpx.post(g.url + "/v1/chat/completions", json={"model": refused, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {g.token}"}, timeout=30)
        assert r.status_code == 502, r.text
        message = error_body(r)["message"]
        assert "no usable credentials" in message and "the gateway log says why" in message, message
        for model in working:
            assert g.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}]).choices
        time.sleep(0.2)
    finally:
        g.stop()
    return r, log.read_text()


def audit_events(gateway: "Gateway", request_id: str, count: int = 1) -> list:
    """The audit events of `request_id`, read as a tenant admin once at least
    `count` are there (the recorder writes in batches), or after 5 s."""
    admin = gateway.mint("--roles", "tenant-admin", "--subject", "auditor")
    deadline = time.monotonic() + 5
    while True:
        events = httpx.get(gateway.url + "/admin/v1/audit?limit=1000", headers={"Authorization": f"Bearer {admin}"}).json()
        mine = [e for e in events["data"] if e.get("requestId") == request_id]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


@pytest.fixture
def raw(gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=30)


json_dumps = json.dumps
