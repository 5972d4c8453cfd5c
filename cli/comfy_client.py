"""Talking to a ComfyUI server: its HTTP endpoints, and following one queued prompt to its end.

`vsrkit submit` (cli/submit.py) is the one user. The websocket says what runs; `/history` is
the record of how a prompt ended (it may lag the websocket's `execution_success`), so a run's
result is read from both.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..engines.errors import InputError, VsrkitError
from ..engines.paths import discard, partial_path, publish

DEFAULT_SERVER = "http://127.0.0.1:8188"
_CHUNK = 1 << 20


class SubmitError(VsrkitError):
    """The workflow could not be run; the message says what the server or the file said."""


class PromptRejected(SubmitError):
    """The server refused the prompt (HTTP 400); carries its node_errors."""

    def __init__(self, message: str, node_errors: Mapping[str, Any]):
        super().__init__(message)
        self.node_errors = dict(node_errors)


class ComfyClient:
    """The few HTTP endpoints of a ComfyUI server that a headless run needs."""

    def __init__(self, server: str, timeout: float = 60.0):
        parsed = urllib.parse.urlsplit(server if "://" in server else f"http://{server}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SubmitError(f"--server {server!r} is not an http(s) address like {DEFAULT_SERVER}")
        self.base = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    @property
    def websocket_url(self) -> str:
        scheme = "wss" if self.base.startswith("https") else "ws"
        return f"{scheme}{self.base[self.base.index('://'):]}/ws?clientId={self.client_id}"

    def _open(self, method: str, path: str, data: Any = None, headers: Mapping[str, str] | None = None):
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SubmitError(f"cannot reach ComfyUI at {self.base} ({reason}); is it running? "
                              "(--server sets the address)") from exc

    def request_json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            with self._open(method, path, data, headers) as response:
                return response.status, _json_or_text(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_text(exc.read())

    def get_json(self, path: str) -> Any:
        status, body = self.request_json("GET", path)
        if status != 200:
            raise SubmitError(f"GET {path} answered HTTP {status}: {body}")
        return body

    def object_info(self, class_type: str | None = None) -> dict:
        path = "/object_info" if class_type is None else f"/object_info/{urllib.parse.quote(class_type)}"
        return self.get_json(path)

    def upload(self, path: Path) -> str:
        """Upload a file to the input folder; the name the server stored it under."""
        if not path.is_file():
            raise SubmitError(f"--upload {path}: no such file")
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{_quote_filename(path.name)}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = len(head) + path.stat().st_size + len(tail)

        def body() -> Iterator[bytes]:
            yield head
            with open(path, "rb") as handle:
                while block := handle.read(_CHUNK):
                    yield block
            yield tail

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)}
        try:
            with self._open("POST", "/upload/image", body(), headers) as response:
                answer = _json_or_text(response.read())
        except urllib.error.HTTPError as exc:
            raise SubmitError(f"uploading {path} failed: HTTP {exc.code} {_json_or_text(exc.read())}") from exc
        name = answer.get("name") if isinstance(answer, dict) else None
        if not name:
            raise SubmitError(f"uploading {path}: unexpected answer {answer!r}")
        subfolder = answer.get("subfolder") or ""
        return f"{subfolder}/{name}" if subfolder else name

    def queue(self, prompt: Mapping[str, Any]) -> tuple[str, dict]:
        status, body = self.request_json("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and body.get("prompt_id"):
            return str(body["prompt_id"]), dict(body.get("node_errors") or {})
        if isinstance(body, dict) and ("node_errors" in body or "error" in body):
            raise PromptRejected(describe_rejection(body, prompt), body.get("node_errors") or {})
        raise SubmitError(f"POST /prompt answered HTTP {status}: {body}")

    def history(self, prompt_id: str) -> dict | None:
        body = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    def is_queued(self, prompt_id: str) -> bool:
        """True while the prompt is running or waiting in the server's queue."""
        queue = self.get_json("/queue")
        items = [*(queue.get("queue_running") or []), *(queue.get("queue_pending") or [])]
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    def cancel(self, prompt_id: str) -> None:
        """Drop the job from the queue if it is waiting, interrupt it if it is running."""
        self.request_json("POST", "/queue", {"delete": [prompt_id]})
        self.request_json("POST", "/interrupt", {"prompt_id": prompt_id})

    def download(self, item: Mapping[str, Any], folder: Path) -> Path:
        """Fetch one output file into `folder` under a name that is free there.

        The bytes go to a hidden partial file beside the target (created with "xb", so it gets
        the process's normal permissions) that is published without overwriting, and removed
        if the download fails or is interrupted.
        """
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        name = Path(str(item["filename"])).name or "download"
        folder.mkdir(parents=True, exist_ok=True)
        temp = partial_path(folder / name)
        try:
            with self._open("GET", f"/view?{query}") as response, open(temp, "xb") as out:
                expected = response.headers.get("Content-Length")
                received = 0
                while block := response.read(_CHUNK):
                    out.write(block)
                    received += len(block)
            # read(n) returns short data at a dropped connection instead of raising: check the length
            if expected is not None and expected.isdigit() and received != int(expected):
                raise SubmitError(f"downloading {item['filename']} failed: the connection ended after "
                                  f"{received} of {expected} bytes")
            return _claim_name(temp, folder, name)
        except urllib.error.HTTPError as exc:
            raise SubmitError(f"downloading {item['filename']} failed: HTTP {exc.code}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise SubmitError(f"downloading {item['filename']} failed: {exc!r}") from exc
        finally:
            discard(temp)


def _quote_filename(name: str) -> str:
    return name.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")


def _claim_name(temp: Path, folder: Path, name: str) -> Path:
    """Give `temp` the name `name` in `folder`, or `stem (n).ext` when that is taken; never overwrite."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in range(10000):
        try:
            return publish(temp, folder / (name if n == 0 else f"{stem} ({n}){suffix}"))
        except InputError:
            continue
    raise SubmitError(f"no free file name for {name} in {folder}")


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", "replace")


def describe_rejection(body: Mapping[str, Any], prompt: Mapping[str, Any]) -> str:
    """The server's refusal as lines a person can act on: one per node error."""
    error = body.get("error") or {}
    headline = error.get("message", "invalid prompt") if isinstance(error, dict) else str(error)
    details = error.get("details") if isinstance(error, dict) else None
    lines = [f"ComfyUI refused the prompt: {headline}" + (f" ({details})" if details else "")]
    for node_id, info in (body.get("node_errors") or {}).items():
        node = prompt.get(str(node_id), {})
        class_type = info.get("class_type") or node.get("class_type", "?")
        title = (node.get("_meta") or {}).get("title")
        label = f"node {node_id} ({class_type}" + (f", {title!r}" if title and title != class_type else "") + ")"
        for err in info.get("errors", []):
            text = err.get("message", "error")
            if err.get("details"):
                text += f": {err['details']}"
            lines.append(f"  {label}: {text}")
    return "\n".join(lines)


@dataclass
class RunResult:
    """What happened to one queued prompt, as seen on the websocket and in /history."""

    prompt_id: str
    finished: bool = False
    success: bool | None = None
    error: dict | None = None
    interrupted: bool = False
    outputs: dict = field(default_factory=dict)


class Reporter:
    """Progress on stderr: one line per node, a live counter for nodes that report progress."""

    def __init__(self, prompt: Mapping[str, Any], stream: TextIO | None = None, quiet: bool = False):
        self.prompt = prompt
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self._open_line = False
        self._cached: set[str] = set()
        self._started = 0

    def _label(self, node_id: str) -> str:
        node = self.prompt.get(str(node_id), {})
        title = (node.get("_meta") or {}).get("title")
        class_type = node.get("class_type", "?")
        return f"{node_id} {title or class_type}" + (f" [{class_type}]" if title and title != class_type else "")

    def _write(self, text: str, newline: bool = True) -> None:
        if self.quiet:
            return
        if self._open_line and newline:
            self.stream.write("\n")
        self.stream.write(text + ("\n" if newline else ""))
        self._open_line = not newline
        self.stream.flush()

    def line(self, text: str) -> None:
        self._write(text)

    def cached(self, nodes: list[str]) -> None:
        self._cached.update(str(n) for n in nodes)
        if nodes:
            self._write(f"cached: {len(nodes)} node(s) reuse earlier results")

    def executing(self, node_id: str) -> None:
        self._started += 1
        total = max(len(self.prompt) - len(self._cached), self._started)
        self._write(f"[{self._started}/{total}] {self._label(node_id)}")

    def progress(self, node_id: str, value: int, maximum: int) -> None:
        pct = 100.0 * value / maximum if maximum else 0.0
        self._write(f"\r    {value}/{maximum} ({pct:.0f}%)", newline=False)

    def close(self) -> None:
        if self._open_line and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._open_line = False


def follow_progress(ws: Any, result: RunResult, reporter: Reporter, deadline: float | None) -> None:
    """Read websocket messages until the server reports this prompt finished (executing, node null)."""
    import websocket

    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        try:
            message = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            reporter.line("websocket closed; waiting for the result in /history")
            return
        if not isinstance(message, str):
            continue  # binary frames are previews
        try:
            event = json.loads(message)
        except json.JSONDecodeError:
            continue
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") not in (None, result.prompt_id):
            continue
        if kind == "execution_start":
            reporter.line(f"running prompt {result.prompt_id}")
        elif kind == "execution_cached":
            reporter.cached(data.get("nodes") or [])
        elif kind == "executing" and data.get("prompt_id") == result.prompt_id:
            if data.get("node") is None:
                result.finished = True
                return
            reporter.executing(str(data.get("display_node") or data["node"]))
        elif kind == "progress" and data.get("prompt_id") == result.prompt_id:
            reporter.progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 0)))
        elif kind == "execution_success":
            result.success = True
        elif kind == "execution_error":
            result.success, result.error = False, data
        elif kind == "execution_interrupted":
            result.success, result.interrupted = False, True


def wait_for_history(client: ComfyClient, result: RunResult, wait: float, deadline: float | None) -> dict:
    """The /history entry of the prompt; it can appear a little after the run ends, so poll for it.

    When the websocket was lost before the end, this also waits for the run itself.
    """
    give_up = time.monotonic() + wait
    while True:
        entry = client.history(result.prompt_id)
        if entry is not None:
            return entry
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise TimeoutError
        if result.finished and now > give_up:
            raise SubmitError(f"prompt {result.prompt_id} finished but /history has no entry for it "
                              f"after {wait:.0f} s")
        time.sleep(0.25)


def apply_history(entry: Mapping[str, Any], result: RunResult) -> None:
    status = entry.get("status") or {}
    for event, data in status.get("messages") or []:
        if event == "execution_error" and result.error is None:
            result.error = data
        elif event == "execution_interrupted":
            result.interrupted = True
        elif event == "execution_success" and result.success is None:
            result.success = True
    if status.get("status_str") == "error" or result.error or result.interrupted:
        result.success = False
    elif result.success is None:
        result.success = status.get("status_str", "success") == "success"
    result.outputs = dict(entry.get("outputs") or {})


def output_files(outputs: Mapping[str, Any]) -> list[dict]:
    """Every saved file (type "output") that the nodes reported, in node order."""
    files = []
    for node_id in sorted(outputs, key=lambda k: (len(str(k)), str(k))):
        for items in (outputs[node_id] or {}).values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename") and item.get("type", "output") == "output":
                    files.append(item)
    return files


def describe_failure(result: RunResult) -> str:
    if result.interrupted:
        return f"prompt {result.prompt_id} was interrupted on the server; no outputs were downloaded"
    error = result.error or {}
    where = f"node {error.get('node_id', '?')} ({error.get('node_type', '?')})"
    message = error.get("exception_message", "the run failed").strip()
    return f"prompt {result.prompt_id} failed in {where}: {message}"


def wait_for_end(client: ComfyClient, prompt_id: str, wait: float) -> dict | None:
    """After an interrupt: the prompt's /history entry once it has ended, None if it never ran.

    ComfyUI moves a prompt out of its queue and into /history in one step, so a prompt found in
    neither, twice in a row, was removed from the queue before it started. TimeoutError when the
    server has not ended it within `wait` seconds.
    """
    give_up = time.monotonic() + wait
    absent = 0
    while True:
        entry = client.history(prompt_id)
        if entry is not None:
            return entry
        absent = 0 if client.is_queued(prompt_id) else absent + 1
        if absent >= 2:
            return None
        if time.monotonic() > give_up:
            raise TimeoutError
        time.sleep(0.25)
