"""Token and cost accounting across every translation, as golden files a
reviewer can read: gateway/tests/golden/tokens/<provider>-<client API>.json,
one per pair. Each holds, for the same question asked whole and streamed, the
usage the client got (in its API's fields) and the tokens and cost the gateway
recorded for the request (its audit event, the usage row's numbers). The
upstream's own count is the mock model's (words, plus 4 per message); the test
also checks that the client's numbers and the recorded ones agree, and that
the recorded cost is the target's price (PRICES, as the fixture declares it)
applied to the recorded tokens, so a translation that loses or invents tokens
or a wrong price fails even before the golden comparison.
UPDATE_GOLDEN=1 rewrites the files."""

import json
import os
from decimal import ROUND_HALF_UP, Decimal

import httpx
import pytest

from conftest import ROOT, audit_events

GOLDEN = ROOT / "gateway/tests/golden/tokens"
# provider type -> the fixture's model on it
PROVIDERS = {"openai": "chat", "anthropic": "claude", "azureOpenai": "azure-chat", "gemini": "gemini", "vertex": "vertex-gemini",
             "bedrock": "bedrock-claude",
             "mock": "in-process"}
EMBEDDERS = {"openai": "embed", "azureOpenai": "azure-embed"}
# model -> (input, output, cached input, per request), per million tokens, in USD: as
# gateway/tests/fixtures/tenant.yaml.tmpl declares them (a target's price, a ModelPrice)
# or as the shipped default list has them (bedrock-claude, embed).
PRICES = {
    "chat": ("2.5", "10", "1.25", "0"),
    "claude": ("3", "15", "0.3", "0"),
    "azure-chat": ("2.75", "11", "2.75", "0"),
    "gemini": ("0.3", "2.5", "0.03", "0"),
    "vertex-gemini": ("1.25", "10", "0.125", "0"),
    "bedrock-claude": ("3", "15", "0.3", "0"),
    "in-process": ("1", "2", "1", "0.0005"),
    "embed": ("0.02", "0", "0.02", "0"),
    "azure-embed": ("0.13", "0", "0.13", "0"),
}
QUESTION = "Say hello to the golden files"


def sse_events(text: str) -> list:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def ask(raw: httpx.Client, token: str, api: str, model: str, stream: bool, request_id: str) -> dict:
    """The usage the client got, in its API's own fields."""
    headers = {"Authorization": f"Bearer {token}", "x-request-id": request_id}
    if api == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        r = raw.post("/v1/chat/completions", json=body, headers=headers)
        usage = sse_events(r.text)[-1]["usage"] if stream else r.json()["usage"]
    elif api == "responses":
        body = {"model": model, "input": QUESTION, "max_output_tokens": 64, "stream": stream}
        r = raw.post("/v1/responses", json=body, headers=headers)
        usage = (sse_events(r.text)[-1]["response"] if stream else r.json())["usage"]
    elif api == "messages":
        body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": QUESTION}], "stream": stream}
        r = raw.post("/v1/messages", json=body, headers={**headers, "anthropic-version": "2023-06-01"})
        if stream:
            usage = next(e for e in sse_events(r.text) if e["type"] == "message_delta")["usage"]
        else:
            usage = r.json()["usage"]
    else:
        body = {"model": model, "input": ["golden files", "count tokens"], "encoding_format": "float"}
        r = raw.post("/v1/embeddings", json=body, headers=headers)
        usage = r.json()["usage"]
    assert r.status_code == 200, r.text
    return usage


def recorded(gateway, request_id: str) -> dict:
    [event] = audit_events(gateway, request_id)
    d = event["details"]
    return {"prompt": d["promptTokens"], "completion": d["completionTokens"], "cached": d["cachedTokens"],
            "cost": d["cost"], "priceVersion": d["priceVersion"]}


def expected_cost(model: str, books: dict) -> str:
    """The price applied to the recorded tokens, rounded once to a nano-unit, half away from zero."""
    inp, out, cached, per_request = map(Decimal, PRICES[model])
    tokens = (books["prompt"] - books["cached"]) * inp + books["cached"] * cached + books["completion"] * out
    cost = (tokens / Decimal(1_000_000) + per_request).quantize(Decimal("1e-9"), rounding=ROUND_HALF_UP)
    return format(cost.normalize(), "f")


def client_tokens(api: str, usage: dict) -> tuple[int, int]:
    if api in ("chat", "embeddings"):
        return usage["prompt_tokens"], usage.get("completion_tokens", 0)
    if api == "messages":  # Anthropic's input_tokens leave out the cache reads
        return usage["input_tokens"] + usage["cache_read_input_tokens"], usage["output_tokens"]
    return usage["input_tokens"], usage["output_tokens"]


def cached_tokens(api: str, usage: dict) -> int:
    """The prompt tokens read from a cache, in the client API's own field."""
    if api == "chat":
        return usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    if api == "responses":
        return usage["input_tokens_details"]["cached_tokens"]
    return usage["cache_read_input_tokens"]


CASES = [(p, api) for p in PROVIDERS for api in ("chat", "responses", "messages")] + \
        [(p, "embeddings") for p in EMBEDDERS]


@pytest.mark.parametrize("provider,api", CASES)
def test_token_accounting_matches_its_golden_file(gateway, raw, provider, api):
    model = EMBEDDERS[provider] if api == "embeddings" else PROVIDERS[provider]
    doc = {"provider": provider, "clientApi": api, "model": model, "answers": []}
    for stream in ([False] if api == "embeddings" else [False, True]):
        request_id = f"golden-{provider}-{api}-{'stream' if stream else 'whole'}"
        usage = ask(raw, gateway.token, api, model, stream, request_id)
        books = recorded(gateway, request_id)
        assert client_tokens(api, usage) == (books["prompt"], books["completion"]), (usage, books)
        assert books["cost"] == expected_cost(model, books), (model, books)
        doc["answers"].append({"stream": stream, "clientUsage": usage, "recorded": books})
    path = GOLDEN / f"{provider}-{api}.json"
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert path.read_text() == text, f"{path} differs: run with UPDATE_GOLDEN=1 and review the diff"


# provider type -> the upstream model behind PROVIDERS' model, whose answers report cache reads
CACHING = {"openai": "primary", "anthropic": "claude-mock", "gemini": "gemini-2.5-flash",
           "bedrock": "anthropic.claude-sonnet-4-5-20250929-v1:0"}


@pytest.mark.parametrize("provider", CACHING)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_cached_tokens_reach_every_client_api(gateway, raw, upstream, provider, stream):
    """The provider reports 3 of the prompt tokens as cache reads (each in its own
    field); every client API reports them in its own, and the prompt count agrees
    with what the gateway recorded."""
    upstream.script(CACHING[provider], [], default={"cached_tokens": 3})
    try:
        for api in ("chat", "responses", "messages"):
            request_id = f"cached-{provider}-{api}-{stream}"
            usage = ask(raw, gateway.token, api, PROVIDERS[provider], stream, request_id)
            assert cached_tokens(api, usage) == 3, (provider, api, usage)
            books = recorded(gateway, request_id)
            assert client_tokens(api, usage) == (books["prompt"], books["completion"]), (api, usage, books)
            # The cache reads are charged at the cached price.
            assert books["cached"] == 3, (api, books)
            assert books["cost"] == expected_cost(PROVIDERS[provider], books), (api, books)
    finally:
        upstream.script(CACHING[provider], [])
