"""Flower's per-message ClientApp process, forked from a warm parent instead of started.

Flower 1.42's SuperNode runs one ``flower-superexec`` process, which starts a fresh
``flwr-clientapp`` interpreter for **every message** the node receives. That process
imports Flower and the ClientApp before it can pull its message: about 1.5 s on an idle
2-core machine, more when a node's clients start at once. A secagg round is two
exchanges (the clients' training, then the key holder's release), so this start-up
alone cost a round several seconds, whatever the training took.

This module runs Flower's own ``flower-superexec`` unchanged except for one thing: a
ClientApp task is handed to a **fork server**, a single-threaded process that imported
Flower's ClientApp runtime and secagg's ClientApp once, and forks a child per task.
The child runs exactly what ``flwr-clientapp`` runs (``run_clientapp`` with the same
token, Runtime API address, TLS settings, parent PID and dependency policy), so each
message still gets its own process, Flower's isolation, and its own exit status. Other
task types, and every ClientApp task while the fork server is not running, are started
as Flower starts them. The SuperNode launcher
(:mod:`secagg.protocols.flower.supernode`) starts this instead of ``flower-superexec``::

    python -m secagg.protocols.flower.forkserver --runtime-api-address 127.0.0.1:9094 ...

The fork server imports modules and nothing else: it holds no key, no model and no
random state. Every privacy-relevant draw in secagg reads the OS CSPRNG when it is made
(:mod:`secagg._random`, SEAL's own generator seeds itself per encryptor), so children
forked from one parent never share randomness (``tests/protocols/flower/test_forkserver.py``).

The fork server reads task specifications (one JSON line each) from its standard input,
a pipe only its SuperExec holds; it exits when that pipe closes (its SuperExec ended).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import IO, Any

__all__ = ["ForkingExecutor", "main", "serve"]

#: The fields of Flower's ``ExecutionSpec`` that a ClientApp child needs.
_SPEC_FIELDS = (
    "runtime_api_address",
    "token",
    "insecure",
    "root_certificates_path",
    "runtime_dependency_install",
    "parent_pid",
    "suppress_output",
)
#: This module's import name (``__name__`` is ``"__main__"`` when it runs with ``-m``).
_MODULE = "secagg.protocols.flower.forkserver"
#: Longest task specification line accepted (a token and a few paths).
_MAX_LINE = 64 * 1024


def _preload() -> Callable[[dict[str, Any]], None]:
    """Import what every ClientApp task needs, once; return the task runner."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    import secagg.protocols.flower.client_app  # noqa: F401  (the app Flower will load)

    def run(spec: dict[str, Any]) -> None:
        insecure = bool(spec["insecure"])
        run_clientapp(
            runtime_api_address=str(spec["runtime_api_address"]),
            token=str(spec["token"]),
            insecure=insecure,
            certificates=validate_and_resolve_root_certificates(
                spec["root_certificates_path"], insecure
            ),
            parent_pid=spec["parent_pid"],
            runtime_dependency_install=bool(spec["runtime_dependency_install"]),
        )

    return run


def _child(run: Callable[[dict[str, Any]], None], spec: dict[str, Any]) -> None:
    """In the forked child: run one ClientApp task, then exit with its status."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # the task specification pipe is the fork server's alone
        if spec.get("suppress_output"):
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        os.close(devnull)
        run(spec)
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a child must never return into the fork server's loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap() -> None:
    """Collect every child that has exited (no zombies; the status is Flower's to report)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(fd: int = 0, *, run: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Fork one child per task specification line read from ``fd``, until it closes.

    ``run`` is what a child runs (default: Flower's ClientApp runtime, imported here
    once). A malformed line is reported on standard error and skipped.
    """
    task = _preload() if run is None else run
    pending = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 1.0)
        _reap()
        if not readable:
            continue
        data = os.read(fd, _MAX_LINE)
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:
            print("secagg fork server: over-long task line dropped", file=sys.stderr)
            pending = b""
        for line in lines:
            try:
                spec = json.loads(line)
                if not isinstance(spec, dict) or set(spec) != set(_SPEC_FIELDS):
                    raise ValueError("not a task specification")
            except ValueError as exc:
                print(f"secagg fork server: task line refused: {exc}", file=sys.stderr)
                continue
            if os.fork() == 0:
                _child(task, spec)


class ForkingExecutor:
    """Flower's SuperExec executor, with ClientApp tasks forked from a warm fork server.

    It keeps the interface of Flower's ``SubprocessExecutor`` (which it wraps and uses
    for every other task type, and for ClientApp tasks whenever the fork server is not
    running).
    """

    def __init__(self, fallback: Any, command: Sequence[str] | None = None) -> None:
        self._fallback = fallback
        self._command = list(command or [sys.executable, "-m", _MODULE, "--serve"])
        self._server: subprocess.Popen[bytes] | None = None
        self._start()

    def _start(self) -> None:
        try:
            self._server = subprocess.Popen(self._command, stdin=subprocess.PIPE)
        except OSError as exc:
            message = f"secagg fork server did not start ({exc}); using flwr-clientapp"
            print(message, file=sys.stderr)
            self._server = None

    def get_eligible_capacity(self, supported_task_types: set[Any], **kwargs: Any) -> Any:
        """As Flower's subprocess executor: every task type, at once."""
        return self._fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, task_type: Any = None, **kwargs: Any) -> None:
        """As Flower's subprocess executor: no capacity gate."""
        self._fallback.wait_for_capacity(task_type, **kwargs)

    def launch(self, spec: Any) -> Any:
        """Fork a ClientApp task from the fork server; start anything else as Flower does."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        server = self._server
        if spec.task_type != TaskType.CLIENT_APP or server is None or server.stdin is None:
            return self._fallback.launch(spec)
        fields = asdict(spec)
        line = json.dumps({name: fields[name] for name in _SPEC_FIELDS}) + "\n"
        try:
            server.stdin.write(line.encode())
            server.stdin.flush()
        except OSError:  # the fork server died: Flower's own way from now on
            self._server = None
            return self._fallback.launch(spec)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Between polls: forget a fork server that has exited (tasks then start as Flower's)."""
        if self._server is not None and self._server.poll() is not None:
            print("secagg fork server exited; using flwr-clientapp", file=sys.stderr)
            self._server = None
        self._fallback.reconcile()

    def close(self) -> None:
        """Close the fork server's pipe (it exits; running tasks finish) and wait for it."""
        server, self._server = self._server, None
        if server is not None:
            _close_quietly(server.stdin)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self._fallback.close()


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``--serve``: be the fork server; otherwise run ``flower-superexec`` with ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--serve"]:
        serve()
        return 0
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    flowers_get_executor = run_superexec.get_executor  # type: ignore[attr-defined]

    def get_executor(executor_type: Any, *args_: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return ForkingExecutor(SubprocessExecutor())
        return flowers_get_executor(executor_type, *args_, **kwargs)

    run_superexec.get_executor = get_executor  # type: ignore[attr-defined]
    sys.argv = ["flower-superexec", *args]
    flower_superexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
