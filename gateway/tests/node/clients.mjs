// The gateway as Node.js applications call it: the Vercel AI SDK (its OpenAI
// provider on the Responses API, on Chat Completions and for embeddings; its
// Anthropic provider on Messages) and the OpenAI Node SDK. Prints one JSON
// object of what each call got; gateway/tests/python/test_node_clients.py
// asserts on it. GATEWAY_URL and GATEWAY_TOKEN name the gateway.
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { embed, generateText, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";
import { z } from "zod";

const baseURL = `${process.env.GATEWAY_URL}/v1`;
const apiKey = process.env.GATEWAY_TOKEN;
const openai = createOpenAI({ baseURL, apiKey });
const anthropic = createAnthropic({ baseURL, apiKey });
const out = {};

const weatherCalls = [];
const tools = {
  get_weather: tool({
    description: "Current weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      weatherCalls.push(city);
      return `sunny in ${city}`;
    },
  }),
};

const responses = await generateText({ model: openai("chat"), prompt: "Say hello" });
out.aiResponses = { text: responses.text, usage: responses.usage };

const streamed = streamText({ model: openai("chat"), prompt: "Say hello" });
out.aiResponsesStream = { text: await streamed.text, usage: await streamed.usage };

const agent = await generateText({
  model: openai("chat"), tools, stopWhen: stepCountIs(3), prompt: "What is the weather in Paris?",
});
out.aiTools = { text: agent.text, steps: agent.steps.length, calls: weatherCalls.slice() };

const chat = await generateText({ model: openai.chat("chat"), prompt: "Say hello" });
out.aiChat = { text: chat.text, usage: chat.usage };

const vector = await embed({ model: openai.embedding("embed"), value: "the quick brown fox" });
out.aiEmbed = { length: vector.embedding.length, usage: vector.usage };

const claude = streamText({ model: anthropic("claude"), prompt: "Say hello" });
out.aiMessagesStream = { text: await claude.text, usage: await claude.usage };

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const completion = await client.chat.completions.create({ model: "chat", messages: [{ role: "user", content: "Say hello" }] });
out.nodeChat = { text: completion.choices[0].message.content, usage: completion.usage };
const response = await client.responses.create({ model: "claude", input: "Say hello" });
out.nodeResponses = { text: response.output_text, usage: response.usage };
const embeddings = await client.embeddings.create({ model: "embed", input: ["a b", "c"] });
out.nodeEmbeddings = { count: embeddings.data.length, length: embeddings.data[0].embedding.length, usage: embeddings.usage };

console.log(JSON.stringify(out));
