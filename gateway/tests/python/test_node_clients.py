"""Node.js applications against the gateway: the Vercel AI SDK (OpenAI
provider on the Responses API, Chat Completions and embeddings, with a tool
it runs itself; Anthropic provider on Messages) and the OpenAI Node SDK, at
the versions pinned in gateway/tests/node/package.json, run by
gateway/tests/node/clients.mjs on the Node.js 22 of e2e/lib/agent-clis."""

import json
import os
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT

HELLO = "Hello from the Tenantgate"


def test_vercel_ai_sdk_and_openai_node_sdk(gateway):
    node_bin = Path(subprocess.run([str(ROOT / "e2e/lib/agent-clis")], check=True, capture_output=True,
                                   text=True).stdout.strip())
    prefix = Path(subprocess.run([str(ROOT / "e2e/lib/node-clients")], check=True, capture_output=True,
                                 text=True).stdout.strip())
    script = prefix / "clients.mjs"
    shutil.copy(ROOT / "gateway/tests/node/clients.mjs", script)
    env = {**os.environ, "PATH": f"{node_bin}:{os.environ['PATH']}", "GATEWAY_URL": gateway.url,
           "GATEWAY_TOKEN": gateway.token}
    out = subprocess.run([str(node_bin / "node"), str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    for key in ("aiResponses", "aiResponsesStream", "aiChat", "aiMessagesStream", "nodeChat", "nodeResponses"):
        assert got[key]["text"].startswith(HELLO), (key, got[key])
    assert got["aiResponses"]["usage"]["outputTokens"] > 0 and got["aiResponsesStream"]["usage"]["outputTokens"] > 0
    assert got["aiMessagesStream"]["usage"]["outputTokens"] > 0
    assert got["aiTools"]["calls"] == ["mock"] and "sunny in mock" in got["aiTools"]["text"], got["aiTools"]
    assert got["aiEmbed"]["length"] == 1536 and got["aiEmbed"]["usage"]["tokens"] == 4
    assert got["nodeEmbeddings"]["count"] == 2 and got["nodeEmbeddings"]["usage"]["prompt_tokens"] == 3
