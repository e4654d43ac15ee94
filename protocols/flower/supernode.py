"""``flower-supernode`` with shorter waits: the same node, less waiting per message.

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none,
sleeps a fixed 3 s before asking again; after handing a message to its ClientApp it
checks for the reply every 0.5 s; and when it pulls a message whose contents the
ServerApp is still uploading, it retries after 1 s, then 2 s, and so on. A secagg
round is two sequential exchanges (the clients' training, then the key holder's
release), so those fixed waits alone cost a round about 3-7 s whatever the training
takes. This launcher runs Flower's own ``flower-supernode`` entry point unchanged, with
the first two waits capped at ``--poll-interval`` seconds (default 0.1) and the retry
starting at 50 ms (:func:`~secagg.protocols.flower.latency.quick_pulls`), and takes every
``flower-supernode`` option::

    python -m secagg.protocols.flower.supernode --poll-interval 0.1 \\
        --superlink superlink.example.org:9092 --root-certificates certs/ca.crt \\
        --node-config 'partition-id=0 num-partitions=3 ...'

Each node then polls the SuperLink up to ``1 / poll-interval`` times a second while
idle: fine for tens of nodes; keep Flower's default (plain ``flower-supernode``) for
large fleets, where the SuperLink's load matters more than a round's latency.

Flower's SuperNode also starts a fresh ``flwr-clientapp`` interpreter per message
(about 1.5 s of imports each); the launcher starts its ``flower-superexec`` as
:mod:`secagg.protocols.flower.forkserver`, which forks each ClientApp process from a
warm parent instead (``--no-fork-server`` keeps Flower's own).

The caps replace the ``time``, ``subprocess`` and ``pull_objects`` seen by
``flwr.supernode.start_client_internal`` alone (nothing else in the process changes);
:func:`check_flower_loop` refuses to start if the pinned Flower's loop no longer has the
waits this was written for.
"""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

from ...errors import ConfigurationError
from .latency import quick_pulls

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "capped_time",
    "check_flower_loop",
    "forking_subprocess",
    "main",
]

#: Seconds between a node's polls while idle (Flower's own: 3 s, then 0.5 s for replies).
DEFAULT_POLL_INTERVAL = 0.1

_HELP = f"""secagg's SuperNode launcher: Flower's flower-supernode with shorter waits.

secagg options (every other option is flower-supernode's, below):
  --poll-interval S   idle poll and reply check in seconds, 0.01-3 (default {DEFAULT_POLL_INTERVAL})
  --no-fork-server    start a cold flwr-clientapp per message, as Flower does
"""

# What the pinned Flower's SuperNode loop must contain for the cap to apply.
_FLOWER_WAITS = ("time.sleep(3)", "time.sleep(0.5)")


def _stand_in(module: types.ModuleType, doc: str, **replaced: Any) -> types.ModuleType:
    """A copy of ``module``'s namespace with the ``replaced`` names swapped in."""
    shim = types.ModuleType(module.__name__, doc)
    shim.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    shim.__dict__.update(replaced)
    return shim


def capped_time(poll_interval: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` waits at most ``poll_interval``.

    Raises
    ------
    ConfigurationError
        If ``poll_interval`` is not a finite number in ``[0.01, 3]``.
    """
    if (
        not isinstance(poll_interval, int | float)
        or not math.isfinite(poll_interval)
        or not 0.01 <= poll_interval <= 3.0
    ):
        raise ConfigurationError("--poll-interval must be a number of seconds in [0.01, 3]")

    def sleep(seconds: float) -> None:
        time.sleep(min(float(seconds), poll_interval))

    return _stand_in(time, "time, with sleep capped for Flower's SuperNode loop", sleep=sleep)


def forking_subprocess() -> types.ModuleType:
    """A stand-in for ``subprocess`` that starts ``flower-superexec`` as the fork server's.

    Every other command starts unchanged; the arguments Flower builds are kept.
    """

    def popen(args: Any, *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        if isinstance(args, list | tuple) and args and args[0] == "flower-superexec":
            args = [sys.executable, "-m", "secagg.protocols.flower.forkserver", *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)

    return _stand_in(subprocess, "subprocess, with flower-superexec replaced", Popen=popen)


def check_flower_loop(module: types.ModuleType) -> None:
    """Refuse a Flower whose SuperNode loop is not the one this launcher was written for.

    Raises
    ------
    ConfigurationError
        If the loop's fixed waits are gone (a newer Flower): use ``flower-supernode``.
    """
    source = inspect.getsource(module)
    missing = [wait for wait in _FLOWER_WAITS if wait not in source]
    if (
        missing
        or "flower-superexec" not in source
        or not isinstance(getattr(module, "time", None), types.ModuleType)
        or not isinstance(getattr(module, "subprocess", None), types.ModuleType)
        or not callable(getattr(module, "pull_objects", None))
    ):
        raise ConfigurationError(
            "this Flower's SuperNode loop differs from Flower 1.42's (no "
            f"{', '.join(missing) or 'module-level time'}); run flower-supernode instead"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flower-supernode`` with ``argv`` (less ``--poll-interval``, ``--no-fork-server``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    interval = DEFAULT_POLL_INTERVAL
    fork_server = "--no-fork-server" not in args
    args = [arg for arg in args if arg != "--no-fork-server"]
    try:
        if "--poll-interval" in args:
            at = args.index("--poll-interval")
            if at + 1 >= len(args):
                raise ConfigurationError("--poll-interval needs a number of seconds")
            try:
                interval = float(args[at + 1])
            except ValueError:
                raise ConfigurationError("--poll-interval needs a number of seconds") from None
            del args[at : at + 2]
        shim = capped_time(interval)
        from flwr.supernode import start_client_internal
        from flwr.supernode.cli.flower_supernode import flower_supernode

        check_flower_loop(start_client_internal)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_client_internal.time = shim  # type: ignore[attr-defined]
    if fork_server:
        start_client_internal.subprocess = forking_subprocess()  # type: ignore[attr-defined]
    if "-h" in args or "--help" in args:
        print(_HELP)
    sys.argv = ["flower-supernode", *args]
    with quick_pulls(start_client_internal):
        flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
