"""`vsrkit submit WORKFLOW.json` (or a shipped workflow's title): run a workflow on a ComfyUI server, headless.

Uploads the input files, queues the prompt, shows progress from the server's websocket,
waits until the run has really finished (an `executing` message with `node: null`;
`/history` may lag `execution_success`), then downloads the outputs. A prompt the server
refuses ends with its `node_errors`. Ctrl-C interrupts the job on the server, waits (a
bounded time) until the server has really ended it, and reports what happened: interrupted,
or finished anyway (its outputs are then downloaded as usual and named).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engines.progress import Cancelled
from .comfy_client import (
    DEFAULT_SERVER,
    ComfyClient,
    Reporter,
    RunResult,
    SubmitError,
    apply_history,
    describe_failure,
    follow_progress,
    output_files,
    wait_for_end,
    wait_for_history,
)
from .workflow import WorkflowError, is_api_format, is_ui_format, ui_to_api

SHIPPED_API_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
HISTORY_WAIT_SECONDS = 30.0
# How long a cancel waits for the server to end the prompt (a node checks for interrupts only
# between its steps; one long step on a CPU can take a minute).
CANCEL_WAIT_SECONDS = 60.0


class SubmitCancelled(Cancelled):
    """Ctrl-C stopped a submitted prompt; the message says what the server did with it."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit", help="run a workflow on a ComfyUI server and download its outputs",
        description="Run a ComfyUI workflow (API or UI format) headless: upload inputs, queue it, show "
                    "progress, wait for the end of the run, download the outputs. Exits non-zero with "
                    "the server's node_errors when it refuses the prompt; Ctrl-C interrupts the job.")
    parser.add_argument("workflow", type=Path,
                        help="workflow JSON file (API format, or UI format to convert), or the title of a "
                             "workflow shipped with vsrkit (its API file in workflows/api/)")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI address (default {DEFAULT_SERVER})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="set an input; NODE is a node id, title or class name; VALUE is JSON when it "
                             "parses as JSON (42, 1.5, true, \"007\"), else a string. Repeatable")
    parser.add_argument("--upload", action="append", default=[], metavar="[NODE.INPUT=]FILE",
                        help="upload FILE to the server's input folder; with NODE.INPUT= also set that "
                             "input to the uploaded name. Repeatable")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."),
                        help="folder for the downloaded outputs (default: here); existing files are kept")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="give up (and interrupt the job) after this many seconds; 0: wait forever")
    parser.add_argument("--no-download", action="store_true", help="leave the outputs on the server")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def parse_assignment(text: str, what: str) -> tuple[str, str, str]:
    """'NODE.INPUT=VALUE' -> (NODE, INPUT, VALUE); NODE may itself contain dots."""
    key, sep, value = text.partition("=")
    node, dot, input_name = key.rpartition(".")
    if not sep or not dot or not node or not input_name:
        raise SubmitError(f"{what} {text!r} is not NODE.INPUT=VALUE (e.g. 3.seed=42 or \"Load Video.video=a.mp4\")")
    return node, input_name, value


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, quoted strings, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_node(prompt: Mapping[str, Any], ref: str) -> str:
    """The id of the node that `ref` names: an id, else a unique title, else a unique class name."""
    if ref in prompt:
        return ref
    for label, key in (("title", lambda n: (n.get("_meta") or {}).get("title")), ("class", lambda n: n["class_type"])):
        matches = [node_id for node_id, node in prompt.items() if key(node) == ref]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SubmitError(f"{ref!r} matches several nodes by {label} ({', '.join(matches)}); use a node id")
    known = ", ".join(f"{i} ({n['class_type']})" for i, n in prompt.items())
    raise SubmitError(f"no node {ref!r} in the workflow; nodes: {known}")


def set_input(client: ComfyClient | None, prompt: dict, ref: str, input_name: str, value: Any) -> None:
    node_id = resolve_node(prompt, ref)
    node = prompt[node_id]
    inputs = node.setdefault("inputs", {})
    if input_name not in inputs and client is not None:
        info = client.object_info(node["class_type"]).get(node["class_type"], {})
        declared = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
        if input_name not in declared:
            raise SubmitError(f"node {node_id} ({node['class_type']}) has no input {input_name!r}; "
                              f"its inputs: {', '.join(declared) or 'none'}")
    inputs[input_name] = value


def shipped_workflows() -> dict[str, Path]:
    """The pack's API workflows (workflows/api/TITLE.json) by title."""
    return {path.stem: path for path in sorted(SHIPPED_API_WORKFLOWS.glob("*.json"))}


def find_workflow(given: Path) -> Path:
    """`given` when it is a file; else the shipped API workflow it names (its title, any case, `.json` or not)."""
    if given.exists() or given.parent != Path("."):
        return given
    wanted = given.name.removesuffix(".json").casefold()
    return next((path for title, path in shipped_workflows().items() if title.casefold() == wanted), given)


def load_prompt(path: Path, client: ComfyClient | None) -> dict:
    """The API-format prompt in `path`; a UI-format file is converted with the server's node definitions."""
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        titles = "; ".join(shipped_workflows()) or "none"
        raise SubmitError(f"workflow file {path} does not exist; give a file, or the title of a workflow "
                          f"shipped with vsrkit: {titles}") from exc
    except json.JSONDecodeError as exc:
        raise SubmitError(f"workflow file {path} is not valid JSON: {exc}") from exc
    if is_api_format(workflow):
        return workflow
    if is_ui_format(workflow):
        if client is None:
            raise SubmitError(f"{path} is a UI-format workflow; converting it needs the server's node list")
        try:
            return ui_to_api(workflow, client.object_info())
        except WorkflowError as exc:
            raise SubmitError(f"{path}: {exc}") from exc
    raise SubmitError(f"{path} is neither an API-format prompt nor a UI-format workflow")


def _names(items: list) -> str:
    return ", ".join(str(item) for item in items)


def stop_on_server(client: ComfyClient, prompt_id: str, output_dir: Path | None, reporter: Reporter,
                   wait: float) -> str:
    """Interrupt the prompt, wait until it has really ended and say what happened to it.

    A prompt that finished before the interrupt took effect gets its outputs downloaded as usual;
    the sentence names them.
    """
    client.cancel(prompt_id)
    reporter.line(f"asked ComfyUI to stop prompt {prompt_id}; waiting up to {wait:g} s for it to end "
                  "(Ctrl-C again stops waiting)")
    try:
        entry = wait_for_end(client, prompt_id, wait)
    except TimeoutError:
        return (f"asked ComfyUI to interrupt prompt {prompt_id}, but it had not ended after {wait:g} s; it "
                "may still be running (see ComfyUI's queue); nothing was downloaded")
    except KeyboardInterrupt:
        return (f"asked ComfyUI to interrupt prompt {prompt_id} and stopped waiting before it ended; it may "
                "still be running (see ComfyUI's queue); nothing was downloaded")
    except SubmitError as exc:
        return (f"asked ComfyUI to interrupt prompt {prompt_id}, then could not follow it to its end ({exc}); "
                "nothing was downloaded")
    if entry is None:
        return f"prompt {prompt_id} was removed from ComfyUI's queue before it started; nothing ran"
    result = RunResult(prompt_id, finished=True)
    apply_history(entry, result)
    files = [f"{item.get('subfolder') + '/' if item.get('subfolder') else ''}{item['filename']}"
             for item in output_files(result.outputs)]
    if not result.success:
        if result.interrupted:
            told = f"prompt {prompt_id} was interrupted on the server"
        else:
            told = describe_failure(result).replace(f"prompt {prompt_id} failed",
                                                    f"prompt {prompt_id} failed before the interrupt took effect")
        if files:
            return f"{told}; the files it saved before it stopped are left on the server: {_names(files)}"
        return f"{told}; it saved no output"
    told = f"prompt {prompt_id} finished before the interrupt took effect"
    if not files:
        return f"{told}; it saved no output"
    if output_dir is None:
        return f"{told}; its outputs are left on the server (--no-download): {_names(files)}"
    saved: list[Path] = []
    try:
        for item in output_files(result.outputs):
            saved.append(client.download(item, output_dir))
    except KeyboardInterrupt:
        return (f"{told}; downloading its outputs was cancelled after {len(saved)} of {len(files)} file(s)"
                + (f" (downloaded: {_names(saved)})" if saved else "") + f"; on the server: {_names(files)}")
    return f"{told}; its outputs were downloaded: {_names(saved)}"


def submit(client: ComfyClient, prompt: dict, output_dir: Path | None, reporter: Reporter,
           timeout: float = 0.0, history_wait: float = HISTORY_WAIT_SECONDS) -> tuple[RunResult, list[Path]]:
    """Queue `prompt`, follow it to the end, download its outputs into `output_dir` (None: don't).

    Ctrl-C (SubmitCancelled) and --timeout (SubmitError) stop the prompt on the server first and
    their message says what the server did with it.
    """
    import websocket

    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        ws = websocket.create_connection(client.websocket_url, timeout=1.0)
    except (websocket.WebSocketException, OSError) as exc:
        raise SubmitError(f"cannot open ComfyUI's websocket at {client.websocket_url}: {exc}") from exc
    prompt_id = None
    try:
        prompt_id, warnings = client.queue(prompt)
        for node_id, info in warnings.items():
            reporter.line(f"warning: node {node_id} ({info.get('class_type', '?')}) will not run: "
                          + "; ".join(e.get("message", "") for e in info.get("errors", [])))
        reporter.line(f"queued prompt {prompt_id}")
        result = RunResult(prompt_id)
        follow_progress(ws, result, reporter, deadline)
        reporter.close()
        apply_history(wait_for_history(client, result, history_wait, deadline), result)
    except (KeyboardInterrupt, TimeoutError) as exc:
        reporter.close()
        if prompt_id is None:
            if isinstance(exc, TimeoutError):
                raise SubmitError(f"gave up after {timeout:g} s (--timeout) before ComfyUI accepted the "
                                  "prompt; check its queue") from None
            raise SubmitCancelled("cancelled before ComfyUI confirmed the prompt; check its queue") from None
        told = stop_on_server(client, prompt_id, output_dir, reporter, CANCEL_WAIT_SECONDS)
        if isinstance(exc, TimeoutError):
            raise SubmitError(f"gave up after {timeout:g} s (--timeout): {told}") from None
        raise SubmitCancelled(f"cancelled: {told}") from None
    finally:
        ws.close()
    if not result.success:
        raise SubmitError(describe_failure(result))
    saved: list[Path] = []
    if output_dir is not None:
        for item in output_files(result.outputs):
            saved.append(client.download(item, output_dir))
    return result, saved


def run(args: argparse.Namespace) -> int:
    client = ComfyClient(args.server)
    prompt = load_prompt(find_workflow(args.workflow), client)
    for spec in args.upload:
        target, sep, file_part = spec.partition("=")
        if not sep or "." not in target:
            target, file_part = "", spec
        name = client.upload(Path(file_part).expanduser())
        if target:
            node, input_name, _ = parse_assignment(f"{target}=", "--upload")
            set_input(client, prompt, node, input_name, name)
        if not args.quiet:
            print(f"uploaded {file_part} as {name}", file=sys.stderr)
    for spec in args.overrides:
        node, input_name, value = parse_assignment(spec, "--set")
        set_input(client, prompt, node, input_name, parse_value(value))
    reporter = Reporter(prompt, quiet=args.quiet)
    started = time.monotonic()
    result, saved = submit(client, prompt, None if args.no_download else args.output_dir, reporter,
                           timeout=args.timeout)
    for path in saved:
        print(path)
    if not args.quiet:
        print(f"prompt {result.prompt_id} done in {time.monotonic() - started:.1f} s, "
              f"{len(saved)} file(s) downloaded", file=sys.stderr)
    return 0
