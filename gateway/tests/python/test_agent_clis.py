"""Agent CLIs doing a task through a tenant gateway, unchanged (npm packages
pinned in e2e/lib/agent-clis): Claude Code (`claude -p`) on /v1/messages with
ANTHROPIC_BASE_URL pointed at the gateway, and Codex CLI (`codex exec`) on
/v1/responses with the gateway as a model provider; the tenant's token is
the API key of both. The model is e2e/mock-llm behind an OpenAI-compatible
provider, scripted to decide as a model would: write a file with the CLI's
own tool, then report. The CLI runs the tool itself, in a directory of the
test's. Everything else the CLIs might call (telemetry, updates) is off."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def clis() -> Path:
    out = subprocess.run([str(ROOT / "e2e/lib/agent-clis")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def offline_env(home: Path) -> dict:
    """No network but the gateway: no telemetry, error reports, updates or other traffic."""
    return {
        "PATH": os.environ["PATH"], "HOME": str(home),
        "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def test_claude_code_writes_a_file_through_the_gateway(gateway, upstream, clis, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    target = work / "hello.txt"
    upstream.script("agent-model", [
        {"tool_call": "Write", "tool_arguments": {"file_path": str(target), "content": "written through the gateway\n"}},
        {"reply": "I wrote hello.txt."},
    ])
    before = upstream.count("agent-model")
    env = {**offline_env(home), "ANTHROPIC_BASE_URL": gateway.url, "ANTHROPIC_API_KEY": gateway.token}
    out = subprocess.run(
        [str(clis / "claude"), "-p", "Write hello.txt saying it was written through the gateway.",
         "--model", "agent", "--tools", "Write", "--allowedTools", "Write", "--output-format", "json"],
        cwd=work, env=env, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    result = json.loads(out.stdout)
    assert result["is_error"] is False and result["result"] == "I wrote hello.txt.", result
    assert target.read_text() == "written through the gateway\n", "Claude Code ran the model's tool call"
    assert upstream.count("agent-model") == before + 2, "one turn for the call, one with its result"
    second = upstream.http.get("/_control/requests", params={"model": "agent-model"}).json()[-1]
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_call_id"] == "call_scripted"
    assert result["usage"]["output_tokens"] > 0, "usage reached the CLI through the translated stream"


def test_codex_writes_a_file_through_the_gateway(gateway, upstream, clis, tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    upstream.script("agent-model", [
        {"tool_call": "exec_command", "tool_arguments": {"cmd": "printf 'written through the gateway\\n' > hello.txt"}},
        {"reply": "I wrote hello.txt."},
    ])
    before = upstream.count("agent-model")
    provider = f'{{name="tenantgate", base_url="{gateway.url}/v1", env_key="TENANTGATE_TOKEN", wire_api="responses"}}'
    last = tmp_path / "last-message.txt"
    out = subprocess.run(
        [str(clis / "codex"), "exec", "--skip-git-repo-check", "--sandbox", "workspace-write",
         "-c", 'model_provider="tenantgate"', "-c", f"model_providers.tenantgate={provider}",
         "-c", "analytics.enabled=false", "-m", "agent", "--output-last-message", str(last),
         "Write hello.txt saying it was written through the gateway."],
        cwd=work, env={**offline_env(home), "TENANTGATE_TOKEN": gateway.token},
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    assert (work / "hello.txt").read_text() == "written through the gateway\n", "Codex ran the model's command"
    assert last.read_text().strip() == "I wrote hello.txt."
    assert upstream.count("agent-model") == before + 2, "one turn for the call, one with its output"
    second = upstream.http.get("/_control/requests", params={"model": "agent-model"}).json()[-1]
    assert any(m["role"] == "tool" and m["tool_call_id"] == "call_scripted" for m in second["messages"])
