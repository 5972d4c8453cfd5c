"""The UI-format workflows in ComfyUI's own frontend: each loads, and the frontend queues exactly our API file.

The host's web page runs in headless Chromium, driven over the DevTools protocol (with
websocket-client, a dependency already). For every shipped UI workflow the page calls the
frontend's `app.loadGraphData(workflow)` then `app.graphToPrompt()`, which is what the Queue
button sends; the result must equal the shipped `.api.json`, and the workflow the frontend
would save must keep our widget values and links. Skips without Chromium.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


class DevTools:
    """Runtime.evaluate over one page's DevTools websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.ids = itertools.count(1)

    def evaluate(self, expression: str):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "awaitPromise": True,
                                            "returnByValue": True}}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise RuntimeError(f"DevTools error: {reply['error']}")
            result = reply.get("result", {})
            if "exceptionDetails" in result:
                raise AssertionError(f"page error: {json.dumps(result['exceptionDetails'])[:2000]}")
            return result.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def page(comfy_host, tmp_path_factory):
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no Chromium to run ComfyUI's frontend in (apt-get install chromium)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                                "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                                f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                                comfy_host.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools = None
    try:
        deadline = time.monotonic() + 60
        while tools is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = [t for t in json.load(response) if t.get("type") == "page"]
                if targets:
                    tools = DevTools(targets[0]["webSocketDebuggerUrl"])
            except OSError:
                pass
            if tools is None:
                assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
                time.sleep(0.5)
        ready = ("!!(window.app && window.app.graph && window.app.graphToPrompt && window.LiteGraph "
                 "&& Object.keys(LiteGraph.registered_node_types).length)")
        deadline = time.monotonic() + 120
        while True:
            try:
                if tools.evaluate(ready):
                    break
            except (RuntimeError, AssertionError):
                pass  # the page is still navigating or loading its scripts
            assert time.monotonic() < deadline, "ComfyUI's frontend did not start"
            time.sleep(0.5)
        yield tools
    finally:
        if tools is not None:
            tools.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_frontend_knows_every_vsrkit_node(page):
    import vsrkit

    registered = page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert set(vsrkit.NODE_CLASS_MAPPINGS) <= set(registered)


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.name)
def test_frontend_loads_the_workflow_and_queues_our_api_file(page, path):
    workflow = path.read_text(encoding="utf-8")
    script = ("(async () => { const wf = " + workflow + "; await window.app.loadGraphData(wf, true, false); "
              "const nodes = window.app.graph._nodes.length; const p = await window.app.graphToPrompt(); "
              "return JSON.stringify({nodes, output: p.output, saved: p.workflow}); })()")
    result = json.loads(page.evaluate(script))
    published = json.loads(workflow)
    assert result["nodes"] == len(published["nodes"])
    saved = {node["id"]: node for node in result["saved"]["nodes"]}
    for node in published["nodes"]:
        assert saved[node["id"]]["widgets_values"] == node["widgets_values"], f"node {node['id']} widgets"
    assert sorted(map(tuple, result["saved"]["links"])) == sorted(map(tuple, published["links"]))
    api = json.loads((WORKFLOWS / "api" / path.name).read_text(encoding="utf-8"))
    for node_id in sorted(set(api) | set(result["output"]), key=int):
        assert result["output"].get(node_id) == api.get(node_id), f"node {node_id} differs"
