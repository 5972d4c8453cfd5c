"""`vsrkit submit` against a small HTTP + websocket peer on 127.0.0.1 that speaks ComfyUI's protocol.

The peer is a network server written here (not a stand-in for ComfyUI's Python modules):
it answers /prompt, /history, /view, /upload/image, /interrupt, /queue and /object_info,
and pushes the websocket messages a real server sends, in a scripted order. Like ComfyUI, it
keeps each prompt in its queue until the prompt's /history entry is written.
"""

from __future__ import annotations

import _thread
import base64
import hashlib
import json
import os
import queue
import stat
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vsrkit.cli import main
from vsrkit.cli import submit as submit_module
from vsrkit.cli.workflow import ui_to_api

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VIDEO_BYTES = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64

PROMPT = {
    "1": {"class_type": "vsrkitLoadVideo", "inputs": {"video": "placeholder.mp4", "max_frames": 0},
          "_meta": {"title": "Load Video"}},
    "2": {"class_type": "vsrkitRealESRGANUpscale", "inputs": {"clip": ["1", 0], "scale": 2},
          "_meta": {"title": "Upscale"}},
    "3": {"class_type": "vsrkitSaveVideo", "inputs": {"clip": ["2", 0], "filename_prefix": "vsrkit/out"},
          "_meta": {"title": "Save Video"}},
}


class FakeComfy:
    """A scripted ComfyUI peer. `script(server, prompt_id)` runs in a thread after a prompt is queued."""

    def __init__(self):
        self.log: list[tuple[float, str, object]] = []
        self.ws_messages: queue.Queue = queue.Queue()
        self.history: dict = {}
        self.history_misses = 0
        self.reject: dict | None = None
        self.script = None
        self.prompts: list[dict] = []
        self.uploads: list[bytes] = []
        self.object_info: dict = {}
        self.view_cut: int | None = None  # /view sends only this many bytes, then drops the connection
        self.hold = False  # queued prompts wait in the queue instead of running
        self.running: list[str] = []
        self.pending: list[str] = []
        self.interrupted = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def record(self, what: str, data: object = None) -> None:
        with self.lock:
            self.log.append((time.monotonic(), what, data))

    def events(self, what: str) -> list:
        with self.lock:
            return [entry for entry in self.log if entry[1] == what]

    def finish(self, prompt_id: str, entry: dict) -> None:
        """The prompt leaves the queue and its /history entry appears in one step (as in ComfyUI)."""
        with self.lock:
            self.history[prompt_id] = entry
            self.running = [p for p in self.running if p != prompt_id]

    def send(self, kind: str, **data) -> None:
        self.ws_messages.put(json.dumps({"type": kind, "data": data}))

    def send_binary(self, payload: bytes) -> None:
        self.ws_messages.put(payload)

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, body) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/ws":
                    return self._websocket()
                if url.path.startswith("/history/"):
                    prompt_id = url.path.rsplit("/", 1)[1]
                    fake.record("history", prompt_id)
                    if fake.history_misses > 0 or prompt_id not in fake.history:
                        fake.history_misses -= 1
                        return self._json(200, {})
                    return self._json(200, {prompt_id: fake.history[prompt_id]})
                if url.path == "/queue":
                    with fake.lock:
                        return self._json(200, {"queue_running": [[0, p, {}, {}, []] for p in fake.running],
                                                "queue_pending": [[1, p, {}, {}, []] for p in fake.pending]})
                if url.path == "/view":
                    query = dict(urllib.parse.parse_qsl(url.query))
                    fake.record("view", query)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(VIDEO_BYTES)))
                    self.end_headers()
                    if fake.view_cut is not None:
                        self.wfile.write(VIDEO_BYTES[:fake.view_cut])
                        self.wfile.flush()
                        self.close_connection = True
                        return None
                    self.wfile.write(VIDEO_BYTES)
                    return None
                if url.path == "/object_info":
                    return self._json(200, fake.object_info)
                if url.path.startswith("/object_info/"):
                    name = urllib.parse.unquote(url.path.rsplit("/", 1)[1])
                    return self._json(200, {name: fake.object_info[name]} if name in fake.object_info else {})
                return self._json(404, {})

            def do_POST(self):
                body = self._body()
                if self.path == "/prompt":
                    request = json.loads(body)
                    fake.prompts.append(request)
                    fake.record("prompt", request)
                    if fake.reject is not None:
                        return self._json(400, fake.reject)
                    prompt_id = f"p{len(fake.prompts)}"
                    with fake.lock:
                        (fake.pending if fake.hold else fake.running).append(prompt_id)
                    self._json(200, {"prompt_id": prompt_id, "number": 1, "node_errors": {}})
                    if fake.script is not None:
                        threading.Thread(target=fake.script, args=(fake, prompt_id), daemon=True).start()
                    return None
                if self.path in ("/interrupt", "/queue"):
                    request = json.loads(body or b"{}")
                    fake.record(self.path.strip("/"), request)
                    if self.path == "/interrupt":
                        fake.interrupted.set()
                    with fake.lock:
                        fake.pending = [p for p in fake.pending if p not in request.get("delete", [])]
                    return self._json(200, {})
                if self.path == "/upload/image":
                    fake.uploads.append(body)
                    name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                    return self._json(200, {"name": f"up_{name}", "subfolder": "", "type": "input"})
                return self._json(404, {})

            def _websocket(self):
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                fake.record("ws_open")
                self.write_lock = threading.Lock()
                self.closed = False
                threading.Thread(target=self._read_client_frames, daemon=True).start()
                self._frame(0x9, b"are you there")
                self._frame(0x1, json.dumps({"type": "status", "data": {"status": {"exec_info": {
                    "queue_remaining": 0}}, "sid": "x"}}).encode())
                while True:
                    try:
                        message = fake.ws_messages.get(timeout=20)
                    except queue.Empty:
                        return
                    if message is None:
                        if not self.closed:
                            self._frame(0x8, b"")
                        return
                    if isinstance(message, bytes):
                        self._frame(0x2, message)
                    else:
                        self._frame(0x1, message.encode())
                        fake.record("ws_sent", json.loads(message))

            def _read_client_frames(self) -> None:
                """Answer the client's close frame (a real server does), note its pongs."""
                try:
                    while True:
                        first, second = self.rfile.read(2)
                        size = second & 0x7F
                        if size == 126:
                            size = struct.unpack("!H", self.rfile.read(2))[0]
                        elif size == 127:
                            size = struct.unpack("!Q", self.rfile.read(8))[0]
                        mask = self.rfile.read(4) if second & 0x80 else b"\0\0\0\0"
                        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(size)))
                        opcode = first & 0x0F
                        if opcode == 0xA:
                            fake.record("pong", payload)
                        elif opcode == 0x8:
                            self._frame(0x8, payload[:2])
                            self.closed = True
                            fake.ws_messages.put(None)
                            return
                except (ValueError, OSError):
                    return

            def _frame(self, opcode: int, payload: bytes) -> None:
                size = len(payload)
                if size < 126:
                    head = struct.pack("!BB", 0x80 | opcode, size)
                elif size < 65536:
                    head = struct.pack("!BBH", 0x80 | opcode, 126, size)
                else:
                    head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
                with self.write_lock:
                    self.wfile.write(head + payload)
                    self.wfile.flush()

        return Handler

    def __enter__(self) -> FakeComfy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.ws_messages.put(None)
        self.httpd.shutdown()
        self.httpd.server_close()


def saved_history(prompt_id: str, status: str = "success", messages=None) -> dict:
    return {
        "prompt": [1, prompt_id, PROMPT, {}, ["3"]],
        "outputs": {"3": {"videos": [{"filename": "out_00001.mp4", "subfolder": "vsrkit", "type": "output"}],
                          "images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]}},
        "status": {"status_str": status, "completed": status == "success", "messages": messages or []},
    }


def successful_run(fake: FakeComfy, prompt_id: str) -> None:
    """Messages in ComfyUI's order: execution_success, then /history (lagging), then executing null."""
    fake.send("execution_start", prompt_id=prompt_id)
    fake.send("execution_cached", nodes=[], prompt_id=prompt_id)
    for node in ("1", "2"):
        fake.send("executing", node=node, display_node=node, prompt_id=prompt_id)
    for value in (1, 2, 3):
        fake.send("progress", value=value, max=3, node="2", prompt_id=prompt_id)
    fake.send_binary(b"\x00\x00\x00\x01preview-jpeg")
    fake.send("executing", node="3", display_node="3", prompt_id=prompt_id)
    fake.send("executed", node="3", output={}, prompt_id=prompt_id)
    fake.send("execution_success", prompt_id=prompt_id)
    time.sleep(0.2)
    fake.history_misses = 1  # the first poll still misses it: /history lags
    fake.finish(prompt_id, saved_history(prompt_id))
    time.sleep(1.0)
    fake.record("finished")
    fake.send("executing", node=None, prompt_id=prompt_id)


def write_prompt(tmp_path: Path, prompt: dict = PROMPT) -> Path:
    path = tmp_path / "workflow.api.json"
    path.write_text(json.dumps(prompt))
    return path


def test_success_waits_for_the_end_then_downloads_outputs_without_overwriting(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "out_00001.mp4").write_bytes(b"keep me")
    with FakeComfy() as fake:
        fake.script = successful_run
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out)])
        assert code == 0
        [finished] = fake.events("finished")
        views = fake.events("view")
    captured = capsys.readouterr()
    assert [v[2] for v in views] == [{"filename": "out_00001.mp4", "subfolder": "vsrkit", "type": "output"}]
    assert views[0][0] > finished[0], "outputs were fetched before the server said the run had finished"
    assert (out / "out_00001.mp4").read_bytes() == b"keep me"
    assert (out / "out_00001 (1).mp4").read_bytes() == VIDEO_BYTES
    assert sorted(p.name for p in out.iterdir()) == ["out_00001 (1).mp4", "out_00001.mp4"]
    assert captured.out.strip() == str(out / "out_00001 (1).mp4")
    assert "3/3" in captured.err and "Upscale" in captured.err
    assert fake.events("pong"), "the client did not answer the server's ping"


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def test_downloaded_file_gets_the_default_permissions(tmp_path, umask_027):
    out = tmp_path / "out"
    with FakeComfy() as fake:
        fake.script = successful_run
        assert main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out), "--quiet"]) == 0
    saved = out / "out_00001.mp4"
    assert saved.read_bytes() == VIDEO_BYTES
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask_027 == 0o640
    assert [p.name for p in out.iterdir()] == ["out_00001.mp4"]


def test_download_cut_off_midway_leaves_no_partial_file(tmp_path, capsys):
    out = tmp_path / "out"
    with FakeComfy() as fake:
        fake.script = successful_run
        fake.view_cut = len(VIDEO_BYTES) // 2
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out), "--quiet"])
        assert fake.events("view")
    assert code == 1
    assert "downloading out_00001.mp4 failed" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_refused_prompt_exits_non_zero_with_node_errors(tmp_path, capsys):
    with FakeComfy() as fake:
        fake.reject = {
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                              "details": "video: 'nope.mp4' not in []", "extra_info": {}}],
                                  "dependent_outputs": ["3"], "class_type": "vsrkitLoadVideo"}},
        }
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "node 1 (vsrkitLoadVideo, 'Load Video'): Value not in list: video: 'nope.mp4' not in []" in err
    assert not (tmp_path / "o").exists()


def test_execution_error_exits_non_zero_and_downloads_nothing(tmp_path, capsys):
    def failing_run(fake, prompt_id):
        fake.send("execution_start", prompt_id=prompt_id)
        fake.send("executing", node="2", display_node="2", prompt_id=prompt_id)
        error = {"prompt_id": prompt_id, "node_id": "2", "node_type": "vsrkitRealESRGANUpscale",
                 "exception_message": "model file x.pth not found", "exception_type": "ModelNotFoundError",
                 "traceback": [], "executed": ["1"], "current_inputs": {}, "current_outputs": []}
        fake.send("execution_error", **error)
        fake.finish(prompt_id, {**saved_history(prompt_id, "error", [["execution_error", error]]), "outputs": {}})
        fake.send("executing", node=None, prompt_id=prompt_id)

    with FakeComfy() as fake:
        fake.script = failing_run
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(tmp_path / "o")])
        assert not fake.events("view")
    assert code == 1
    assert "node 2 (vsrkitRealESRGANUpscale): model file x.pth not found" in capsys.readouterr().err


def start_then_ctrl_c(fake: FakeComfy, prompt_id: str) -> None:
    """The run starts and reports progress; then the user presses Ctrl-C (SIGINT in the client)."""
    fake.send("execution_start", prompt_id=prompt_id)
    fake.send("executing", node="2", display_node="2", prompt_id=prompt_id)
    fake.send("progress", value=1, max=100, node="2", prompt_id=prompt_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e[2]["type"] == "progress" for e in fake.events("ws_sent")):
        time.sleep(0.01)
    time.sleep(0.3)
    _thread.interrupt_main()


def stops_when_interrupted(fake: FakeComfy, prompt_id: str) -> None:
    """A run that honours /interrupt: it ends interrupted, with no outputs (as ComfyUI records it)."""
    start_then_ctrl_c(fake, prompt_id)
    assert fake.interrupted.wait(10)
    time.sleep(0.5)  # the node notices the interrupt at its next step
    interrupted = {"prompt_id": prompt_id, "node_id": "2", "node_type": "vsrkitRealESRGANUpscale", "executed": ["1"]}
    fake.send("execution_interrupted", **interrupted)
    fake.finish(prompt_id, {**saved_history(prompt_id, "error", [["execution_start", {"prompt_id": prompt_id}],
                                                                  ["execution_interrupted", interrupted]]),
                            "outputs": {}})
    fake.record("ended")
    fake.send("executing", node=None, prompt_id=prompt_id)


def finishes_anyway(fake: FakeComfy, prompt_id: str) -> None:
    """A run whose last step was already under way: the interrupt comes too late and it saves its video."""
    start_then_ctrl_c(fake, prompt_id)
    assert fake.interrupted.wait(10)
    time.sleep(0.5)
    fake.send("executing", node="3", display_node="3", prompt_id=prompt_id)
    fake.send("execution_success", prompt_id=prompt_id)
    fake.finish(prompt_id, saved_history(prompt_id))
    fake.record("ended")
    fake.send("executing", node=None, prompt_id=prompt_id)


def never_ends(fake: FakeComfy, prompt_id: str) -> None:
    start_then_ctrl_c(fake, prompt_id)


def test_ctrl_c_reports_an_interrupt_the_server_honoured(tmp_path, capsys, python_sigint_handler):
    out = tmp_path / "o"
    with FakeComfy() as fake:
        fake.script = stops_when_interrupted
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out)])
        interrupts = [e[2] for e in fake.events("interrupt")]
        deletes = [e[2] for e in fake.events("queue")]
        [ended] = fake.events("ended")
        last_history = fake.events("history")[-1]
        assert not fake.events("view")
    err = capsys.readouterr().err
    assert code == 130
    assert interrupts == [{"prompt_id": "p1"}]
    assert deletes == [{"delete": ["p1"]}]
    assert last_history[0] > ended[0], "the client stopped before the server had ended the prompt"
    assert "vsrkit: cancelled: prompt p1 was interrupted on the server; it saved no output" in err
    assert "finished" not in err
    assert not out.exists() or not any(out.iterdir())


def test_ctrl_c_when_the_server_finishes_anyway_downloads_and_names_the_outputs(tmp_path, capsys,
                                                                               python_sigint_handler):
    out = tmp_path / "o"
    with FakeComfy() as fake:
        fake.script = finishes_anyway
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out)])
        assert [e[2] for e in fake.events("interrupt")] == [{"prompt_id": "p1"}]
        views = [e[2] for e in fake.events("view")]
    err = capsys.readouterr().err
    saved = out / "out_00001.mp4"
    assert code == 130
    assert views == [{"filename": "out_00001.mp4", "subfolder": "vsrkit", "type": "output"}]
    assert sorted(out.iterdir()) == [saved]
    assert saved.read_bytes() == VIDEO_BYTES
    assert (f"vsrkit: cancelled: prompt p1 finished before the interrupt took effect; its outputs were "
            f"downloaded: {saved}") in err
    assert "interrupted on the server" not in err


def test_ctrl_c_with_no_download_names_the_outputs_left_on_the_server(tmp_path, capsys, python_sigint_handler):
    with FakeComfy() as fake:
        fake.script = finishes_anyway
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "--no-download"])
        assert not fake.events("view")
    assert code == 130
    assert ("prompt p1 finished before the interrupt took effect; its outputs are left on the server "
            "(--no-download): vsrkit/out_00001.mp4") in capsys.readouterr().err


def test_ctrl_c_while_queued_removes_the_prompt_before_it_runs(tmp_path, capsys, python_sigint_handler):
    def waits_in_the_queue(fake, prompt_id):
        time.sleep(0.3)
        _thread.interrupt_main()

    with FakeComfy() as fake:
        fake.hold = True
        fake.script = waits_in_the_queue
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(tmp_path / "o")])
        assert [e[2] for e in fake.events("queue")] == [{"delete": ["p1"]}]
        assert fake.pending == []
    assert code == 130
    assert "prompt p1 was removed from ComfyUI's queue before it started; nothing ran" in capsys.readouterr().err


def test_ctrl_c_says_so_when_the_server_does_not_end_the_prompt_in_time(tmp_path, capsys, monkeypatch,
                                                                       python_sigint_handler):
    monkeypatch.setattr(submit_module, "CANCEL_WAIT_SECONDS", 1.0)
    out = tmp_path / "o"
    with FakeComfy() as fake:
        fake.script = never_ends
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(out)])
        assert fake.events("interrupt")
        assert not fake.events("view")
    err = capsys.readouterr().err
    assert code == 130
    assert ("asked ComfyUI to interrupt prompt p1, but it had not ended after 1 s; it may still be running "
            "(see ComfyUI's queue); nothing was downloaded") in err
    assert not out.exists()


def test_ctrl_c_says_so_when_the_server_goes_away_before_ending_the_prompt(tmp_path, capsys,
                                                                          python_sigint_handler):
    def server_stops(fake, prompt_id):
        start_then_ctrl_c(fake, prompt_id)
        assert fake.interrupted.wait(10)
        fake.httpd.shutdown()
        fake.httpd.server_close()

    with FakeComfy() as fake:
        fake.script = server_stops
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 130
    assert "asked ComfyUI to interrupt prompt p1, then could not follow it to its end (cannot reach ComfyUI" in err
    assert err.rstrip().endswith("nothing was downloaded")
    assert not (tmp_path / "o").exists()


def test_timeout_interrupts_and_reports_the_outcome(tmp_path, capsys):
    def slow_then_honours_the_interrupt(fake, prompt_id):
        fake.send("execution_start", prompt_id=prompt_id)
        fake.send("executing", node="2", display_node="2", prompt_id=prompt_id)
        assert fake.interrupted.wait(10)
        fake.send("execution_interrupted", prompt_id=prompt_id, node_id="2")
        fake.finish(prompt_id, {**saved_history(prompt_id, "error", [["execution_interrupted", {}]]), "outputs": {}})
        fake.send("executing", node=None, prompt_id=prompt_id)

    with FakeComfy() as fake:
        fake.script = slow_then_honours_the_interrupt
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "-o", str(tmp_path / "o"),
                     "--timeout", "1"])
    assert code == 1
    assert ("gave up after 1 s (--timeout): prompt p1 was interrupted on the server; it saved no output"
            in capsys.readouterr().err)


def test_upload_and_set_fill_the_prompt(tmp_path):
    clip = tmp_path / "my clip.mp4"
    clip.write_bytes(VIDEO_BYTES)
    with FakeComfy() as fake:
        fake.script = successful_run
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "--no-download", "--quiet",
                     "--upload", f"Load Video.video={clip}", "--set", "vsrkitRealESRGANUpscale.scale=4",
                     "--set", "3.filename_prefix=\"007\""])
        assert code == 0
        sent = fake.prompts[0]["prompt"]
        assert VIDEO_BYTES in fake.uploads[0]
        assert b'filename="my clip.mp4"' in fake.uploads[0]
        assert not fake.events("view")
    assert sent["1"]["inputs"]["video"] == "up_my clip.mp4"
    assert sent["2"]["inputs"]["scale"] == 4
    assert sent["3"]["inputs"]["filename_prefix"] == "007"
    assert sent["2"]["inputs"]["clip"] == ["1", 0]


def test_set_refuses_an_input_the_node_does_not_have(tmp_path, capsys):
    with FakeComfy() as fake:
        fake.object_info = {"vsrkitRealESRGANUpscale": {"input": {"required": {"clip": ["VSRKIT_CLIP"],
                                                                               "scale": ["INT", {}]}}}}
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "--set", "2.sclae=4"])
        assert not fake.prompts
    assert code == 1
    assert "has no input 'sclae'; its inputs: clip, scale" in capsys.readouterr().err


def test_ui_format_file_is_converted_with_the_servers_definitions(tmp_path):
    definitions = {
        "EmptyImage": {"input": {"required": {"width": ["INT", {"default": 512, "min": 1}],
                                              "height": ["INT", {"default": 512, "min": 1}]}},
                       "output": ["IMAGE"], "output_node": False, "display_name": "EmptyImage"},
        "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}},
                      "output": [], "output_node": True, "display_name": "Save Image"},
    }
    ui = {"version": 0.4, "last_node_id": 2, "last_link_id": 1, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
          "nodes": [{"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [200, 80], "inputs": [],
                     "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [64, 32]},
                    {"id": 2, "type": "SaveImage", "pos": [300, 0], "size": [200, 80],
                     "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
                     "widgets_values": ["x"]}]}
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    with FakeComfy() as fake:
        fake.object_info = definitions
        fake.script = successful_run
        assert main(["submit", str(path), "--server", fake.url, "--no-download", "--quiet"]) == 0
        sent = fake.prompts[0]["prompt"]
    assert sent == ui_to_api(ui, definitions)
    assert sent["1"]["inputs"] == {"width": 64, "height": 32}
    assert sent["2"]["inputs"] == {"images": ["1", 0], "filename_prefix": "x"}


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    with FakeComfy() as fake:
        url = fake.url
    code = main(["submit", str(write_prompt(tmp_path)), "--server", url])
    assert code == 1
    assert "cannot" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["nodot=1", "3.=1", ".x=1", "3.seed"])
def test_malformed_set_is_refused(tmp_path, capsys, text):
    with FakeComfy() as fake:
        code = main(["submit", str(write_prompt(tmp_path)), "--server", fake.url, "--set", text])
        assert not fake.prompts
    assert code == 1
    assert "NODE.INPUT=VALUE" in capsys.readouterr().err


SHIPPED = Path(submit_module.__file__).resolve().parents[1] / "workflows" / "api" / "Fast upscale x2, Real-ESRGAN.json"


@pytest.mark.parametrize("given", [str(SHIPPED), "Fast upscale x2, Real-ESRGAN", "fast upscale X2, real-esrgan.json"])
def test_shipped_api_workflow_runs_from_workflows_api(tmp_path, monkeypatch, given):
    """By its path in workflows/api/, or by its title (a name that is no file here)."""
    monkeypatch.chdir(tmp_path)
    with FakeComfy() as fake:
        fake.script = successful_run
        code = main(["submit", given, "--server", fake.url, "--no-download", "--quiet"])
        sent = [p["prompt"] for p in fake.prompts]
    assert code == 0
    assert sent == [json.loads(SHIPPED.read_text(encoding="utf-8"))]


def test_a_file_here_wins_over_a_shipped_title(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Fast upscale x2, Real-ESRGAN").write_text(json.dumps(PROMPT))
    with FakeComfy() as fake:
        fake.script = successful_run
        assert main(["submit", "Fast upscale x2, Real-ESRGAN", "--server", fake.url, "--no-download", "--quiet"]) == 0
        assert fake.prompts[0]["prompt"] == PROMPT


def test_unknown_workflow_names_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with FakeComfy() as fake:
        code = main(["submit", "Fast upscale x3", "--server", fake.url])
        assert not fake.prompts
    assert code == 1
    err = capsys.readouterr().err
    assert "workflow file Fast upscale x3 does not exist" in err
    assert "Fast upscale x2, Real-ESRGAN; " in err and "Restore old video, Real-ESRGAN x4" in err
