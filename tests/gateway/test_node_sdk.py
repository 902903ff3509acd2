"""The same flows from Node's official `openai` package (npm), to show a non-Python service can
use the gateway by changing its base URL: chat completion, streaming, files + batches, and an
error with the field at fault. `.ci/run` installs the package into tests/gateway/node."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
import orjson
import pytest
from openai.types.chat import ChatCompletion

from tests.gateway.conftest import NODE_DIR, GatewayProc, Tenant


def test_node_openai_package_runs_chat_stream_and_batches(gateway: GatewayProc, tenant: Tenant) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install -y nodejs npm; .ci/run does it)")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.skip(f"Node's openai package is not installed in {NODE_DIR} (npm install --prefix {NODE_DIR}; .ci/run does it)")
    env = {**os.environ, "BASE_URL": f"{gateway.url}/v1", "API_KEY": tenant.key}
    out = subprocess.run([node, str(NODE_DIR / "sdk_flows.mjs")], env=env, capture_output=True, timeout=240, cwd=NODE_DIR)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    report = orjson.loads(out.stdout.splitlines()[-1])

    def result(chat_id: str) -> dict:
        job_id = chat_id.removeprefix("chatcmpl-")
        r = httpx.get(f"{gateway.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30)
        return r.json()["result"]  # type: ignore[no-any-return]

    chat = report["chat"]
    assert chat["content"] == result(chat["id"])["answer"] and chat["usage"]["total_tokens"] > 0
    assert chat["receipt_job"] == chat["id"].removeprefix("chatcmpl-")
    stream = report["stream"]
    assert stream["content"] == result(stream["id"])["answer"] and stream["usage"]["total_tokens"] > 0
    batch = report["batch"]
    assert batch["status"] == "completed" and batch["counts"]["total"] == 5
    assert sorted(x["custom_id"] for x in batch["lines"]) == [f"node-{n}" for n in range(5)]
    for line in batch["lines"]:
        ChatCompletion.model_validate(line["response"]["body"])
    assert report["error"] == {"status": 400, "param": "messages[0].role", "type": "invalid_request_error"}
