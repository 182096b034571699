"""The `bedrock` provider: Amazon Bedrock's Converse and ConverseStream APIs,
each request signed with SigV4 by an access key from Secrets (or, for
`bedrock-by-key`, a Bedrock API key as a bearer token), behind every chat
client API. e2e/mock-llm plays Bedrock: it computes each signature again
with AWS's algorithm, checks the body as Converse does, and streams the binary
event-stream framing. boto3, AWS's own SDK, proves the double is faithful:
its signatures pass and it parses the double's answers and frames."""

import json

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import httpx
import openai
import pytest

from conftest import AWS_KEY_ID, AWS_SECRET, FOREIGN_KEY, debug_log_of_one_chat

TEXT = "Hello from the Tenantgate"
HELLO = [{"role": "user", "content": "Say hello"}]
MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}


def bedrock(upstream, secret: str = AWS_SECRET, region: str = "us-east-1"):
    """boto3's Bedrock runtime client pointed at mock-llm, no retries, nothing else reached."""
    return boto3.client(
        "bedrock-runtime", endpoint_url=upstream.url, region_name=region,
        aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def test_the_double_is_what_boto3_expects(upstream):
    client = bedrock(upstream)
    hello = [{"role": "user", "content": [{"text": "Say hello"}]}]
    r = client.converse(modelId=MODEL, messages=hello, inferenceConfig={"maxTokens": 64})
    assert r["output"]["message"]["content"][0]["text"].startswith(TEXT) and r["stopReason"] == "end_turn"
    assert r["usage"]["outputTokens"] > 0
    events = list(client.converse_stream(modelId=MODEL, messages=hello)["stream"])
    assert list(events[0]) == ["messageStart"] and list(events[-1]) == ["metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text.startswith(TEXT) and events[-1]["metadata"]["usage"]["outputTokens"] > 0
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(upstream, secret="not-the-secret").converse(modelId=MODEL, messages=hello)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(upstream, region="eu-west-3").converse(modelId=MODEL, messages=hello)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException", "signed for another region"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId=MODEL, messages=[{"role": "assistant", "content": [{"text": "hi"}]}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    r = httpx.post(f"{upstream.url}/model/{MODEL}/converse", json={"messages": hello})
    assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_chat_signed_with_sigv4(client, upstream):
    r = client.chat.completions.create(model="bedrock-claude", messages=[{"role": "system", "content": "Be brief."}, *HELLO])
    assert r.choices[0].message.content.startswith(TEXT) and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    last = upstream.last(MODEL)
    assert last["credential"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request" in last["credential"]
    assert last["body"]["system"] == [{"text": "Be brief."}]


def test_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(model="bedrock-claude", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(TEXT)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0


def test_tool_use_round_trip(client, upstream):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="bedrock-claude", messages=ask, tools=[WEATHER])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}
    sent = upstream.last(MODEL)["body"]["toolConfig"]["tools"][0]["toolSpec"]
    assert sent["inputSchema"]["json"] == WEATHER["function"]["parameters"]
    r2 = client.chat.completions.create(model="bedrock-claude", tools=[WEATHER], messages=[
        *ask, r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}])
    assert "sunny, 21C" in r2.choices[0].message.content
    result = upstream.last(MODEL)["body"]["messages"][-1]["content"][0]["toolResult"]
    assert result == {"toolUseId": call.id, "content": [{"text": "sunny, 21C"}]}


def test_streamed_tool_use(client):
    stream = client.chat.completions.create(model="bedrock-claude", messages=[{"role": "user", "content": "Weather?"}],
                                            tools=[WEATHER], tool_choice="required", stream=True)
    calls = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("tooluse_")
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "mock"}


def test_responses_and_messages_on_bedrock(gateway, client):
    assert client.responses.create(model="bedrock-claude", input="Say hello").output_text.startswith(TEXT)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)
    with claude.messages.stream(model="bedrock-claude", max_tokens=32, messages=HELLO) as stream:
        assert "".join(stream.text_stream).startswith(TEXT)
        assert stream.get_final_message().usage.output_tokens > 0


def test_the_pods_web_identity_assumes_the_role(gateway, client, upstream):
    """The projected token (STATE_DIR/identity/<slug>/token, as the kubelet writes it in a
    cluster) is exchanged at STS for temporary credentials, which sign every request until
    they near their end: one exchange serves many calls."""
    gateway.write_projected_tokens()
    before = upstream.count("aws-sts")
    r = client.chat.completions.create(model="bedrock-by-role", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT)
    chunks = list(client.chat.completions.create(model="bedrock-by-role", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(TEXT)
    assert upstream.count("aws-sts") - before == 1, "the temporary credentials are cached"
    last = upstream.last("amazon.nova-lite-v1")["credential"]
    assert last.startswith("AWS4-HMAC-SHA256 Credential=ASIA") and "x-amz-security-token" in last, last


def test_sts_refuses_what_aws_refuses(gateway, upstream):
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleSessionName": "tenantgate-test",
            "RoleArn": "arn:aws:iam::123456789012:role/tenantgate-test"}
    wrong_audience = gateway.mint("--audience", "api://AzureADTokenExchange", "--subject", "system:serviceaccount:x:y")
    r = httpx.post(upstream.url + "/", data={**form, "WebIdentityToken": wrong_audience})
    assert r.status_code == 400 and "<Code>InvalidIdentityToken</Code>" in r.text, r.text
    foreign = gateway.mint("--audience", "sts.amazonaws.com", key=FOREIGN_KEY)
    r = httpx.post(upstream.url + "/", data={**form, "WebIdentityToken": foreign})
    assert r.status_code == 400 and "<Code>InvalidIdentityToken</Code>" in r.text, "a key the provider does not trust"
    good = gateway.mint("--audience", "sts.amazonaws.com", "--subject", "system:serviceaccount:x:y")
    r = httpx.post(upstream.url + "/", data={**form, "WebIdentityToken": good, "RoleArn": "not-a-role"})
    assert r.status_code == 400 and "ValidationError" in r.text
    r = httpx.post(upstream.url + "/", data={**form, "WebIdentityToken": good})
    assert r.status_code == 200 and "<AccessKeyId>ASIA" in r.text, r.text


def test_a_bedrock_api_key(client, upstream):
    r = client.chat.completions.create(model="bedrock-by-key", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT)
    assert upstream.last("amazon.nova-pro-v1")["credential"] == "Bearer key-one"


def test_failover_both_ways(client, upstream):
    upstream.script("bedrock-down", [{"status": 503, "times": 3}])
    before = upstream.count("after-bedrock")
    r = client.chat.completions.create(model="bedrock-then-openai", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and upstream.count("after-bedrock") == before + 1
    upstream.script("openai-down", [{"status": 500, "times": 3}])
    r = client.chat.completions.create(model="openai-then-bedrock", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in r if c.choices).startswith(TEXT)
    assert upstream.last("bedrock-after-openai")["credential"].startswith("AWS4-HMAC-SHA256 ")


def test_bedrock_errors_reach_the_client_by_name(client, upstream):
    upstream.script(MODEL, [{"status": 400}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bedrock-claude", messages=HELLO)
    assert "mock-llm scripted 400" in str(e.value) and '{"message"' not in str(e.value), "AWS's message, not its JSON"


def test_no_secret_in_the_gateway_log(tmp_path, upstream):
    text = debug_log_of_one_chat(tmp_path, upstream, "bedrock-claude")
    assert AWS_SECRET not in text and "Signature=" not in text, "neither the key nor a signature is logged"
