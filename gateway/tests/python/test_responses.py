"""`/v1/responses` as OpenAI's clients call it: the official openai SDK
(create, the typed event stream and its accumulating helper, function tools)
and the OpenAI Agents SDK running an agent with a function tool, against
models on an OpenAI-compatible upstream, an Anthropic upstream and the
in-process mock."""

import openai
import pytest

from conftest import audit_events

TEXT = "Hello from the Tenantgate"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MODELS = ["chat", "claude", "in-process"]


@pytest.mark.parametrize("model", MODELS)
def test_create(client, model):
    r = client.responses.create(model=model, instructions="Be brief.", input="Say hello")
    assert r.object == "response" and r.status == "completed" and r.model == model
    assert r.output_text.startswith(TEXT)
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Be brief." and r.store is False


@pytest.mark.parametrize("model", MODELS)
def test_stream_of_typed_events(client, model):
    events = list(client.responses.create(model=model, input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.output_text.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith(TEXT) and events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens > 0, "the usage chunk reaches response.completed"


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip_with_the_stream_helper(client, model):
    with client.responses.stream(model=model, input="Weather in Paris?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather" and call.arguments == '{"city":"mock"}'
    items = [{"role": "user", "content": "Weather in Paris?"}, *[o.model_dump(exclude_none=True) for o in final.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}]
    r = client.responses.create(model=model, input=items, tools=[WEATHER])
    assert "sunny, 21C" in r.output_text


def test_max_output_tokens_makes_an_incomplete_response(client):
    r = client.responses.create(model="chat", input="Say hello", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_the_upstream_gets_the_translated_request(client, upstream):
    client.responses.create(model="chat", instructions="Be brief.", max_output_tokens=40,
                            input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    body = upstream.last("primary")["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert body["max_completion_tokens"] == 40 and body["model"] == "primary"


def test_what_cannot_be_honoured_is_refused(client, upstream):
    before = upstream.count("primary")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", input="again", previous_response_id="resp_123")
    assert e.value.param == "previous_response_id" and "send the whole conversation in input" in e.value.message
    assert upstream.count("primary") == before
    client.responses.create(model="chat", input="hi", tools=[{"type": "web_search"}, WEATHER])
    sent = upstream.last("primary")["body"]["tools"]
    assert [t["function"]["name"] for t in sent] == ["get_weather"], "hosted tools are left out"


def test_failover_from_an_openai_upstream_to_an_anthropic_one(client, upstream):
    upstream.script("msg-down", [{"status": 503, "times": 3}])
    before = upstream.count("claude-after-openai")
    r = client.responses.create(model="openai-then-claude", input="Say hello")
    assert r.output_text.startswith(TEXT) and upstream.count("claude-after-openai") == before + 1


def test_audited_as_responses(gateway, client):
    client.responses.with_raw_response.create(model="chat", input="Say hello",
                                              extra_headers={"x-request-id": "py-responses-audit"})
    mine = audit_events(gateway, "py-responses-audit")
    assert [(e["action"], e["resource"], e["status"]) for e in mine] == [("responses", "chat", 200)]


@pytest.mark.parametrize("model", ["chat", "claude"])
def test_an_openai_agents_sdk_agent_calls_its_function_tool(gateway, upstream, model):
    """The Agents SDK's default model is the Responses API: the agent asks,
    the mock model calls the tool, the SDK runs it and sends the result back,
    and the model answers with it."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.token, max_retries=0)
    agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=model, openai_client=client))
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert calls == ["mock"], "the mock model called the tool with arguments from its schema"
    assert "sunny in mock" in result.final_output
