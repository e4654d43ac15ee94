"""A warm worker per SuperNode: the ClientApp's work without a fresh interpreter per message.

Flower starts a new ClientApp process for every message. Importing torch and Opacus and
loading the dataset there would cost seconds per message and node, far more than a small
model's local training. A node therefore keeps one long-lived worker process that has
them loaded (and caches the run's data): each ClientApp process only forwards its
message content and node context to the worker over a Unix socket, and returns the reply.

- The socket lives in a private directory (``/tmp/secagg-<uid>``, mode 0700): only the
  node's own user can reach it. The worker runs secagg's handlers and nothing else.
- The worker is started by the first message that finds none, and exits when the
  process that launches the ClientApps (the SuperNode) is gone, or after
  :data:`IDLE_TIMEOUT` seconds without a message. With node config ``worker-dir`` it
  records its PID there (``worker.pid``) so that whoever started the node can stop it.
- Node config ``warm-worker=false`` runs every message in the ClientApp process instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # type: ignore[attr-defined]
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # type: ignore[attr-defined]

from ...errors import ConfigurationError, SecaggError

__all__ = ["IDLE_TIMEOUT", "call", "enabled", "main", "socket_path"]

IDLE_TIMEOUT = 600.0
_START_TIMEOUT = 120.0
_LENGTH = struct.Struct(">Q")
_KINDS = ("train", "attention", "release", "outcome")


def enabled(context: Context) -> bool:
    """Whether this node forwards its messages to a warm worker (node config ``warm-worker``)."""
    value = context.node_config.get("warm-worker", True)
    if not isinstance(value, bool):
        raise ConfigurationError("node config warm-worker must be true or false")
    return value


def socket_path(context: Context) -> Path:
    """The node's worker socket: a short name in a private per-user directory."""
    base = Path(tempfile.gettempdir()) / f"secagg-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigurationError(f"{base} must be owned by this user with mode 0700")
    key = f"{context.node_id}|{context.node_config.get('worker-dir', '')}"
    return base / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.sock"


# ---------------------------------------------------------------------- framing
def _send(sock: socket.socket, *parts: bytes) -> None:
    sock.sendall(b"".join(_LENGTH.pack(len(p)) + p for p in parts))


def _receive(sock: socket.socket, count: int) -> list[bytes]:
    parts = []
    for _ in range(count):
        (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
        parts.append(_read_exactly(sock, size))
    return parts


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the secagg worker closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- the ClientApp side
def call(kind: str, content: RecordDict, context: Context) -> RecordDict:
    """Run handler ``kind`` in the node's warm worker (starting it if needed).

    The worker's changes to ``context.state`` are copied back; an exception the handler
    raised is raised again here with the same ``secagg.errors`` type.
    """
    path = socket_path(context)
    sock = _connect(path, context)
    with sock:
        _send(
            sock,
            json.dumps({"kind": kind}).encode(),
            context_to_proto(context).SerializeToString(),
            recorddict_to_proto(content).SerializeToString(),
        )
        header, reply, state = _receive(sock, 3)
    outcome = json.loads(header)
    if not outcome["ok"]:
        raise _rebuild(outcome["error"])
    context.state = recorddict_from_proto(ProtoRecordDict.FromString(state))
    return recorddict_from_proto(ProtoRecordDict.FromString(reply))


def _connect(path: Path, context: Context) -> socket.socket:
    with contextlib.suppress(OSError):
        return _open(path)
    lock = path.with_suffix(".lock")
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one starter per node
        with contextlib.suppress(OSError):
            return _open(path)
        _start(path, context)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                return _open(path)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the secagg worker did not start (socket {path})")
            time.sleep(0.05)


def _open(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _start(path: Path, context: Context) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    command = [
        sys.executable,
        "-m",
        "secagg.protocols.flower.worker",
        "--socket",
        str(path),
        "--parent-pid",
        str(os.getppid()),
    ]
    worker_dir = context.node_config.get("worker-dir")
    log_path = os.devnull
    if isinstance(worker_dir, str) and worker_dir:
        folder = Path(worker_dir)
        folder.mkdir(parents=True, exist_ok=True)
        command += ["--pid-file", str(folder / "worker.pid")]
        log_path = str(folder / "worker.log")
    with open(log_path, "ab") as log:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def _rebuild(error: dict[str, str]) -> Exception:
    errors = importlib.import_module("secagg.errors")
    kind = getattr(errors, error.get("type", ""), None)
    message = error.get("message", "")
    if isinstance(kind, type) and issubclass(kind, SecaggError):
        return kind(message)
    return RuntimeError(f"{error.get('type')}: {message}")


# ---------------------------------------------------------------------- the worker side
def serve(
    path: Path,
    *,
    parent_pid: int,
    handlers: dict[str, Callable[[RecordDict, Context], RecordDict]],
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Answer requests on ``path`` until the parent is gone or the worker is idle too long."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(4)
    server.settimeout(1.0)
    last = time.monotonic()
    try:
        while _alive(parent_pid) and time.monotonic() - last < idle_timeout:
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(None)
                _answer(connection, handlers)
            last = time.monotonic()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _answer(
    connection: socket.socket, handlers: dict[str, Callable[[RecordDict, Context], RecordDict]]
) -> None:
    try:
        header, context_bytes, content_bytes = _receive(connection, 3)
    except (ConnectionError, struct.error):
        return
    state = b""
    try:
        kind = json.loads(header)["kind"]
        if kind not in handlers:
            raise ConfigurationError(f"the secagg worker has no handler {kind!r}")
        context = context_from_proto(ProtoContext.FromString(context_bytes))
        content = recorddict_from_proto(ProtoRecordDict.FromString(content_bytes))
        reply = handlers[kind](content, context)
        outcome: dict[str, Any] = {"ok": True}
        reply_bytes = recorddict_to_proto(reply).SerializeToString()
        state = recorddict_to_proto(context.state).SerializeToString()
    except Exception as exc:  # every failure goes back to the ClientApp, typed
        outcome = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        reply_bytes = b""
    with contextlib.suppress(OSError):
        _send(connection, json.dumps(outcome).encode(), reply_bytes, state)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m secagg.protocols.flower.worker``: the worker (started by :func:`call`)."""
    parser = argparse.ArgumentParser(prog="python -m secagg.protocols.flower.worker")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT)
    args = parser.parse_args(argv)
    from .. import attention, backends, local, plan  # noqa: F401 - torch and Opacus, once
    from . import client_app

    if args.pid_file is not None:
        args.pid_file.write_text(str(os.getpid()))
    handlers = {kind: getattr(client_app, f"handle_{kind}") for kind in _KINDS}
    serve(
        args.socket, parent_pid=args.parent_pid, handlers=handlers, idle_timeout=args.idle_timeout
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
