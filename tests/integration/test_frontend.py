"""The shipped workflows in ComfyUI's own frontend, opened the way a user opens them.

The host's web page runs in headless Chromium, driven over the DevTools protocol (with
websocket-client, a dependency already). Each shipped UI workflow is opened in a fresh
browser profile through the frontend's own file handling: a drop event carrying the file
(drag and drop) or the file picker's change event (the Open dialog). It must raise no
alert, put every node on the canvas, and queue (the Run button's path, with the request
caught before it leaves the page) exactly our API file, `_meta` titles aside: core nodes
get other titles from other frontends. The Templates browser must list exactly the UI
workflows, and the thumbnail it requests for each must be a 400x400 JPEG.

With VSRKIT_SCREENSHOTS=DIR the run also saves, per workflow, the window after opening it
(`TITLE-full.png`) and a still of its first upscaler with its loader (`TITLE.png`), which
`docs/make_thumbnails.py --graphs DIR` turns into thumbnails and the README screenshot.
Skips without Chromium.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.workflow_layout import layout_problems

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1600, 900)
STILL = 720  # side of the square still, in screen pixels
THUMBNAIL_SIZE = 400
ROUTES = ("drop", "open dialog")


def ui_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def without_meta(prompt: dict) -> dict:
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in prompt.items()}


class DevTools:
    """One browser-level DevTools websocket; pages are sessions on it (flat protocol)."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=180, suppress_origin=True)
        self.ids = itertools.count(1)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") != message_id:
                continue  # an event, or another command's late reply
            if "error" in reply:
                raise RuntimeError(f"DevTools {method}: {reply['error']}")
            return reply.get("result", {})

    def close(self) -> None:
        self.ws.close()


class Page:
    """A tab in its own browser context (a fresh profile: no stored workflows or settings)."""

    def __init__(self, tools: DevTools, url: str):
        self.tools = tools
        self.context = tools.send("Target.createBrowserContext")["browserContextId"]
        self.target = tools.send("Target.createTarget", {"url": "about:blank", "browserContextId": self.context})[
            "targetId"]
        self.session = tools.send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        width, height = WINDOW
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        self.send("Page.navigate", {"url": url})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.tools.send(method, params, self.session)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"page error: {json.dumps(result['exceptionDetails'])[:2000]}")
        return result.get("result", {}).get("value")

    def call(self, function: str, *args):
        """Run `function` (JavaScript source of an async function) with JSON arguments; returns its value."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})")

    def screenshot(self, clip: dict | None = None) -> bytes:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        self.tools.send("Target.closeTarget", {"targetId": self.target})
        self.tools.send("Target.disposeBrowserContext", {"browserContextId": self.context})


READY = """async () => !!(window.app && app.graph && app.extensionManager && app.extensionManager.toast
    && app.extensionManager.workflow && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length
    && document.getElementById('comfy-file-input'))"""

CLOSE_DIALOGS = """async () => {
    for (const dialog of document.querySelectorAll('[role=dialog]')) {
        const close = dialog.querySelector('button[aria-label=Close], .p-dialog-close-button');
        if (close) close.click();
    }
    for (const button of document.querySelectorAll('button')) {
        if (button.textContent.trim() === 'Dismiss') button.click();
    }
    const found = document.querySelectorAll('[role=dialog]').length;
    app.extensionManager.toast.removeAll();
    await new Promise(r => setTimeout(r, 300));
    return found;
}"""

# Hands the file to the frontend as a user does: dropped on the page, or picked in the Open dialog.
OPEN_FILE = """async (name, text, route) => {
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    const toasts = [], alerts = [];
    const stop = app.extensionManager.toast.$onAction(({name, args}) =>
        toasts.push({action: name, message: JSON.stringify(args[0])}));
    const nativeAlert = window.alert;
    window.alert = message => alerts.push(String(message));
    try {
        const file = new File([text], name, {type: 'application/json'});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        if (route === 'drop') {
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        } else {
            const input = document.getElementById('comfy-file-input');
            input.files = transfer.files;
            input.dispatchEvent(new Event('change'));
        }
        const stem = name.replace(/\\.json$/, '');
        for (let i = 0; i < 300 && !toasts.length && !alerts.length; i++) {
            const active = app.extensionManager.workflow.activeWorkflow;
            if (active && active.filename === stem && app.graph._nodes.length) break;
            await sleep(100);
        }
        await sleep(1500);  // later warnings (missing models) come after the graph
    } finally {
        stop();
        window.alert = nativeAlert;
    }
    return {
        toasts, alerts,
        dialogs: Array.from(document.querySelectorAll('[role=dialog]')).map(d => d.textContent.trim().slice(0, 400)),
        tab: app.extensionManager.workflow.activeWorkflow?.filename,
        nodes: app.graph._nodes.map(n => ({id: n.id, type: n.type,
                                            registered: !!LiteGraph.registered_node_types[n.type]})),
    };
}"""

# The Run button's path (app.queuePrompt), with the request caught in the page instead of sent.
QUEUE = """async () => {
    const api = app.api, send = api.queuePrompt;
    let caught = null;
    api.queuePrompt = async (number, data) => { caught = data; return {prompt_id: 'kept-in-the-page', number: 0}; };
    try { await app.queuePrompt(0, 1); } finally { api.queuePrompt = send; }
    return caught && {output: caught.output, workflow: caught.workflow};
}"""

# Frames the first upscaler and its loader in a square at the middle of the canvas.
FRAME_STILL = """async (side) => {
    const upscale = app.graph._nodes.find(n => /^vsrkit(RealESRGAN|FlashVSR)Upscale$/.test(n.type));
    const nodes = [upscale.getInputNode(0), upscale];
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - title));
    const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const rect = app.canvas.canvas.getBoundingClientRect();
    const scale = 0.9 * Math.min(side / (right - left), side / (bottom - top), 1.2);
    const cx = rect.width / 2, cy = rect.height / 2;
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [cx / scale - (left + right) / 2, cy / scale - (top + bottom) / 2];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    await new Promise(r => setTimeout(r, 300));
    return {x: rect.left + cx - side / 2, y: rect.top + cy - side / 2, width: side, height: side};
}"""

# The Templates browser as a user opens it: the pack's entry, one card per template; for each card
# the thumbnail it shows (width, or the frontend's placeholder) and the URLs the page requested.
TEMPLATES = """async (titles) => {
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    const listed = (await app.api.getWorkflowTemplates()).vsrkit || [];
    performance.clearResourceTimings();  // room in the timing buffer for the thumbnail requests
    await app.extensionManager.command.execute('Comfy.BrowseTemplates');
    const find = text => Array.from(document.querySelectorAll('[role=dialog] *'))
        .find(e => e.textContent.trim() === text && e.children.length <= 2);
    let entry = null;
    for (let i = 0; i < 300 && !(entry = find('vsrkit')); i++) await sleep(100);
    if (!entry) return {listed, error: 'no vsrkit entry in the Templates browser'};
    const dialogs = document.querySelectorAll('[role=dialog]').length;
    if (dialogs !== 1) return {listed, error: `${dialogs} dialogs open instead of the Templates browser alone`};
    entry.click();
    const cards = {};
    for (const title of titles) {
        const placeholder = image => /default-template/.test(image.getAttribute('src') || '');
        let image = null;
        for (let i = 0; i < 300 && !(image && image.complete && image.naturalWidth && !placeholder(image)); i++) {
            let card = find(title);
            while (card && !card.querySelector('img')) card = card.parentElement;
            image = card && card.querySelector('img');
            if (card) card.scrollIntoView();
            await sleep(100);
        }
        cards[title] = image ? {width: image.naturalWidth, height: image.naturalHeight, placeholder: placeholder(image)}
                             : null;
    }
    const shown = Object.values(cards).every(Boolean) ? [] : Array.from(document.querySelectorAll('[role=dialog] *'))
        .filter(e => !e.children.length && e.textContent.trim()).map(e => e.textContent.trim()).slice(0, 60);
    const requested = performance.getEntriesByType('resource').map(e => decodeURIComponent(new URL(e.name).pathname))
        .filter(path => path.includes('/workflow_templates/vsrkit/'));
    const served = {};
    for (const path of new Set(requested)) {
        const response = await fetch(path.split('/').map(encodeURIComponent).join('/'));
        served[path] = {status: response.status, type: response.headers.get('content-type')};
    }
    return {listed, cards, shown, requested, served};
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def devtools(comfy_host, tmp_path_factory):
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no Chromium to run ComfyUI's frontend in (apt-get install chromium)")
    port = _free_port()
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", f"--user-data-dir={profile}",
                                f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--remote-debugging-port={port}",
                                "--remote-debugging-address=127.0.0.1", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools = None
    try:
        deadline = time.monotonic() + 60
        while tools is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5) as response:
                    tools = DevTools(json.load(response)["webSocketDebuggerUrl"])
            except OSError:
                assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
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


def open_comfy(tools: DevTools, url: str) -> Page:
    """ComfyUI in a fresh profile, started, with its first-run dialogs closed."""
    page = Page(tools, url)
    deadline = time.monotonic() + 180
    while True:
        try:
            if page.call(READY):
                break
        except (RuntimeError, AssertionError):
            pass  # still navigating or loading its scripts
        assert time.monotonic() < deadline, "ComfyUI's frontend did not start"
        time.sleep(0.5)
    # First-run dialogs (the Templates browser for a new user) open a moment after the app is
    # ready: close them until none has come back for two seconds.
    quiet_since, deadline = time.monotonic(), time.monotonic() + 30
    while time.monotonic() - quiet_since < 2.0 and time.monotonic() < deadline:
        if page.call(CLOSE_DIALOGS):
            quiet_since = time.monotonic()
        time.sleep(0.5)
    return page


@pytest.fixture
def fresh_page(devtools, comfy_host):
    page = open_comfy(devtools, comfy_host.url)
    yield page
    page.close()


def test_frontend_knows_every_vsrkit_node(fresh_page):
    import vsrkit

    registered = fresh_page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert set(vsrkit.NODE_CLASS_MAPPINGS) <= set(registered)


def take_pictures(page: Page, folder: Path, title: str) -> None:
    """The window as the user sees the opened workflow, and a square still of its first upscaler."""
    folder.mkdir(parents=True, exist_ok=True)
    page.call(CLOSE_DIALOGS)
    (folder / f"{title}-full.png").write_bytes(page.screenshot())
    clip = page.call(FRAME_STILL, STILL)
    (folder / f"{title}.png").write_bytes(page.screenshot(clip))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.stem)
def test_user_opens_the_workflow_and_queues_our_api_file(fresh_page, path, route):
    text = path.read_text(encoding="utf-8")
    published = json.loads(text)
    opened = fresh_page.call(OPEN_FILE, path.name, text, route)
    alerts = opened["alerts"] + [t["message"] for t in opened["toasts"]
                                 if t["action"] == "addAlert" or '"severity":"error"' in t["message"]]
    assert not alerts, f"the frontend complained on opening {path.name}: {alerts}"
    unexpected = [d for d in opened["dialogs"] if "missing models" not in d.lower()]
    assert not unexpected, f"dialogs after opening {path.name}: {unexpected}"
    assert opened["tab"] == path.stem
    on_canvas = sorted((n["id"], n["type"]) for n in opened["nodes"])
    assert on_canvas == sorted((n["id"], n["type"]) for n in published["nodes"])
    assert all(n["registered"] for n in opened["nodes"]), opened["nodes"]
    if os.environ.get("VSRKIT_SCREENSHOTS") and route == ROUTES[0]:
        take_pictures(fresh_page, Path(os.environ["VSRKIT_SCREENSHOTS"]), path.stem)

    queued = fresh_page.call(QUEUE)
    assert queued is not None, "the frontend queued nothing"
    api = json.loads((WORKFLOWS / "api" / path.name).read_text(encoding="utf-8"))
    assert without_meta(queued["output"]) == without_meta(api)
    saved = {node["id"]: node for node in queued["workflow"]["nodes"]}
    for node in published["nodes"]:
        assert saved[node["id"]]["widgets_values"] == node["widgets_values"], f"node {node['id']} widgets"
    assert sorted(map(tuple, queued["workflow"]["links"])) == sorted(map(tuple, published["links"]))
    assert layout_problems(queued["workflow"]) == [], "with the sizes the frontend gave the nodes"


def test_templates_browser_lists_exactly_the_ui_workflows_with_thumbnails(fresh_page, tmp_path):
    titles = sorted(p.stem for p in ui_files())
    found = fresh_page.call(TEMPLATES, titles)
    (tmp_path / "templates.png").write_bytes(fresh_page.screenshot())
    assert "error" not in found, found
    assert sorted(found["listed"]) == titles, "/api/workflow_templates lists other files"
    for title in titles:
        card = found["cards"][title]
        assert card is not None, f"no card titled {title!r}; the browser shows {found['shown']} " \
                                 f"({tmp_path / 'templates.png'})"
        assert not card["placeholder"] and (card["width"], card["height"]) == (THUMBNAIL_SIZE, THUMBNAIL_SIZE), \
            f"{title}: the card shows {card}"
        thumbnail = f"/api/workflow_templates/vsrkit/{title}.jpg"
        assert thumbnail in found["requested"], f"the frontend did not ask for {thumbnail}"
        assert found["served"][thumbnail] == {"status": 200, "type": "image/jpeg"}
