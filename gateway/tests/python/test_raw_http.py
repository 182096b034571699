"""Bad input and bad credentials over raw HTTP: status, OpenAI's error shape,
a message naming the field, and WWW-Authenticate on 401."""

import base64
import json
import time

import httpx
import pytest

from conftest import FOREIGN_KEY, Gateway, error_body

OK = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def post(raw, gateway, body, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token or gateway.token}", "Content-Type": "application/json"}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return raw.post("/v1/chat/completions", content=content, headers=headers, **kwargs)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": 42, "messages": []}, "model"),
        ({"model": "chat", "messages": "hello"}, "messages"),
        ({"model": "chat"}, "messages"),
        ({"model": "chat", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "chat", "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "temperature": "hot"}, "temperature"),
        ({**OK, "max_tokens": -1}, "max_tokens"),
        ({**OK, "tools": [{"type": "function"}]}, "tools[0]"),
        ({**OK, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_wrong_types_name_the_field(raw, gateway, body, param):
    r = post(raw, gateway, body)
    assert r.status_code == 400, r.text
    error = error_body(r)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("body", ['{"model": "chat", "messages": [', "not json", "[1, 2]", ""])
def test_malformed_json(raw, gateway, body):
    r = post(raw, gateway, body)
    assert r.status_code == 400, r.text
    assert error_body(r)["type"] == "invalid_request_error"


def test_ten_megabyte_body_is_413(raw, gateway):
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]})
    r = post(raw, gateway, body)
    assert r.status_code == 413
    assert error_body(r)["code"] == "request_too_large"


def test_unknown_model_is_404(raw, gateway):
    r = post(raw, gateway, {**OK, "model": "nope"})
    assert r.status_code == 404
    error = error_body(r)
    assert error["param"] == "model" and "nope" in error["message"]


def b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def bad_tokens(gateway):
    claims = {"iss": "https://issuer.test", "aud": "tenantgate", "sub": "x", "exp": int(time.time()) + 600}
    return {
        "expired": (gateway.mint("--ttl-secs", "-120"), "expired"),
        "foreign key": (gateway.mint(key=FOREIGN_KEY), "signature"),
        "wrong audience": (gateway.mint("--audience", "someone-else"), "audience"),
        "wrong issuer": (gateway.mint("--issuer", "https://evil.test"), "issuer"),
        "alg none": (f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.", "algorithm"),
        "HS256 with the public key as secret": (
            f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'quickstart-dev'})}.{b64(claims)}.c2ln", "algorithm"),
        "garbage": ("abc.def", "well-formed"),
    }


@pytest.mark.parametrize("case", ["expired", "foreign key", "wrong audience", "wrong issuer", "alg none",
                                  "HS256 with the public key as secret", "garbage"])
def test_bad_tokens_are_401_with_a_challenge(raw, gateway, case):
    token, reason = bad_tokens(gateway)[case]
    r = post(raw, gateway, OK, token=token)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith('Bearer realm="tenantgate", error="invalid_token"')
    error = error_body(r)
    assert error["type"] == "authentication_error"
    assert reason in error["message"]


def test_missing_token_is_401(raw):
    r = raw.post("/v1/chat/completions", json=OK)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="tenantgate"'
    error_body(r)


def test_request_id_is_returned(raw, gateway):
    headers = {"Authorization": f"Bearer {gateway.token}", "X-Request-Id": "req-42"}
    r = raw.post("/v1/chat/completions", json=OK, headers=headers)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42"


def test_metrics_expose_requests_breakers_and_streams(raw, gateway):
    # One answer and one stream of its own, so the series exist whatever ran before.
    assert post(raw, gateway, OK).status_code == 200
    streamed = post(raw, gateway, {**OK, "stream": True})
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text, streamed.text[:300]
    text = raw.get("/metrics").text
    for name in ["tenantgate_requests_total", "tenantgate_added_latency_seconds_bucket",
                 "tenantgate_upstream_latency_seconds_bucket", "tenantgate_circuit_breaker_state",
                 "tenantgate_tokens_total", "tenantgate_streams_in_flight"]:
        assert name in text, name


def test_probes_and_metrics_on_their_own_port_are_not_on_the_api_port(upstream):
    """`--ops-listen` (what the operator sets in a cluster): /livez, /readyz and /metrics answer
    there and nowhere on the API port, which an Ingress routes; the API stays on the API port.
    The ops port cuts a client that never finishes its headers, as the API port does."""
    import socket

    g = Gateway(upstream, ops_listener=True, extra_args=("--header-read-timeout-secs", "1"))
    try:
        host, port = g.ops_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            # Cut after 1 s: the connection ends (a socket.timeout after 30 s would fail the test).
            received = b""
            while chunk := slow.recv(4096):
                received += chunk
            assert b" 200 " not in received, received

        assert g.ops_url != g.url
        for path in ("/livez", "/readyz", "/metrics"):
            assert httpx.get(g.ops_url + path).status_code == 200, path
            r = httpx.get(g.url + path)
            assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert "tenantgate_" in httpx.get(g.ops_url + "/metrics").text
        assert httpx.get(g.ops_url + "/v1/models", headers={"Authorization": f"Bearer {g.token}"}).status_code == 404
        assert httpx.get(g.url + "/v1/models", headers={"Authorization": f"Bearer {g.token}"}).status_code == 200
    finally:
        g.stop()
