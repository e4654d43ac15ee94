"""A local Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, then ``flwr run``.

This is the one-command demo and what the deployment test drives::

    python -m secagg.protocols.flower.deploy --rounds 2 --nodes 3

Everything lives in a work directory: one ``FLWR_HOME`` per process, the logs, the key
files (outside the app folder) and the app folder that ``flwr run`` uploads. Ports are
free ones picked at start; runtime dependency installation, update checks and telemetry
are off. Every process this module starts (and every process those start, such as
SuperExec and the app processes) is stopped by its PID when the deployment closes,
also after an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..._files import atomic_write_bytes
from ...errors import ConfigurationError, SecaggError
from ..backends import state_from_bytes
from ..config import FederationConfig, client_id, default_config
from .appdir import toml_value, write_app
from .config import DEFAULT_CONFIG, run_config_from_config
from .keys import KeyFiles, find_app_dir, generate_keys
from .server_app import GLOBAL_STATE_FILE, METRICS_FILE
from .supernode import DEFAULT_POLL_INTERVAL, capped_time

__all__ = [
    "DeploymentError",
    "DeploymentResult",
    "LocalDeployment",
    "free_port",
    "is_running",
    "main",
    "make_certificates",
    "run_local",
    "stop_process",
]

HOST = "127.0.0.1"
CONNECTION = "secagg-local"


class DeploymentError(SecaggError):
    """The local deployment did not start, or its run did not finish (see its logs)."""


@dataclass(frozen=True)
class DeploymentResult:
    """A finished run: the ServerApp's output and where the logs are.

    Attributes
    ----------
    metrics : dict
        ``metrics.json`` written by the ServerApp (config, per-round metrics).
    global_state : dict[str, torch.Tensor]
        The final global model.
    seconds : float
        Wall time of ``flwr run`` (SuperLink and SuperNodes already up).
    log_dir : Path
        One log file per process.
    """

    metrics: dict[str, Any]
    global_state: dict[str, torch.Tensor]
    seconds: float
    log_dir: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against PID reuse), ``None`` if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_running(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie)."""
    if started is None or _start_time(pid) != started:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    pending, seen = [pid], []
    while pending:
        for child in _children(pending.pop()):
            if child not in seen:
                seen.append(child)
                pending.append(child)
    return seen


def _signal(pid: int, started: str | None, sig: int) -> None:
    if started is not None and _start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """Stop ``process`` and everything it started, by PID: SIGTERM, then SIGKILL."""
    tree = [(pid, _start_time(pid)) for pid in _descendants(process.pid)]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)
    # Children outlive a killed parent (SuperExec runs in its own session): stop them too.
    tree += [(pid, _start_time(pid)) for pid, _ in tree for pid in _descendants(pid)]
    for pid, started in tree:
        _signal(pid, started, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_running(p, s) for p, s in tree):
        time.sleep(0.1)
    for pid, started in tree:
        _signal(pid, started, signal.SIGKILL)


class LocalDeployment:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1, stopped on exit.

    Parameters
    ----------
    workdir : path-like
        Homes, logs and config files go here (it must not be inside an app folder).
    key_files : KeyFiles or None
        From :func:`~secagg.protocols.flower.keys.generate_keys` (outside the app folder);
        ``None`` for a plaintext (``he=false``) run, where no node gets key material.
    nodes : int
        Client SuperNodes (``partition-id`` 0..nodes-1).
    dedicated_key_holder : bool, optional
        Start one more SuperNode that only holds the key (releases); otherwise the node
        of partition 0 is also the key holder.
    tls : bool, optional
        Serve the SuperLink over TLS with a throw-away CA and server certificate (for
        127.0.0.1) made in ``workdir/certs``; SuperNodes and ``flwr run`` verify it with
        the CA certificate. Default: ``--insecure`` (loopback only).
    startup_timeout : float, optional
        Most seconds to wait for the SuperLink to listen.
    poll_interval : float or None, optional
        Start SuperNodes with :mod:`secagg.protocols.flower.supernode` and this idle
        poll (default 0.1 s); ``None`` runs Flower's plain ``flower-supernode``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        key_files: KeyFiles | None,
        *,
        nodes: int,
        dedicated_key_holder: bool = False,
        tls: bool = False,
        startup_timeout: float = 60.0,
        poll_interval: float | None = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if nodes < 1:
            raise ConfigurationError("a deployment needs at least one SuperNode")
        self.workdir = Path(workdir).resolve()
        if find_app_dir(self.workdir) is not None:
            raise ConfigurationError(f"{self.workdir} is inside a Flower app folder")
        self.key_files = key_files
        self.nodes = nodes
        self.dedicated_key_holder = dedicated_key_holder
        self.startup_timeout = startup_timeout
        self.tls = tls
        if poll_interval is not None:
            capped_time(poll_interval)  # validates it here, not in every node's log
        self.poll_interval = poll_interval
        self.certs: dict[str, Path] = {}
        self.log_dir = self.workdir / "logs"
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._bin = Path(sys.executable).parent

    # ------------------------------------------------------------------ processes
    def _env(self, name: str) -> dict[str, str]:
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "FLWR_HOME": str(home),
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                # SuperExec looks for new ClientApp tasks every second by default.
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{self._bin}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        return env

    def _start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self._env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def _worker_dir(self, name: str) -> Path:
        return self.workdir / "workers" / name

    def _node_config(self, index: int | None) -> str:
        name = "key-holder" if index is None else f"supernode-{index}"
        items: dict[str, bool | int | float | str] = {"worker-dir": str(self._worker_dir(name))}
        if index is not None:
            items.update({"partition-id": index, "num-partitions": self.nodes})
        files = self.key_files
        if files is not None:
            items["secret-context"] = str(files.secret_context)
            if index is not None:
                items["signing-key"] = str(files.signing_keys[client_id(index)])
            holder = index is None if self.dedicated_key_holder else index == 0
            if holder:
                items["key-holder"] = True
                items["key-holder-state"] = str(files.key_holder_state)
        return " ".join(f"{k}={toml_value(v)}" for k, v in items.items())

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, wait until it listens, then start the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        if self.tls:
            self.certs = make_certificates(self.workdir / "certs")
            security = [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
            node_security = ["--root-certificates", str(self.certs["ca"])]
        else:
            security = node_security = ["--insecure"]
        superlink = [
            str(self._bin / "flower-superlink"),
            *security,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        process = self._start("superlink", superlink)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if process.poll() is not None:
                raise DeploymentError(f"the SuperLink exited:\n{self.log_tail('superlink')}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1):
                break
            if time.monotonic() > deadline:
                raise DeploymentError(f"the SuperLink did not listen on port {self.port}")
            time.sleep(0.2)
        indices: list[int | None] = list(range(self.nodes))
        if self.dedicated_key_holder:
            indices.append(None)
        for index in indices:
            name = "key-holder" if index is None else f"supernode-{index}"
            supernode = [
                *self._supernode_command(),
                *node_security,
                "--superlink",
                f"{HOST}:{self.port}",
                "--host",
                HOST,
                "--port",
                str(free_port()),
                "--node-config",
                self._node_config(index),
            ]
            self._start(name, supernode)

    def _supernode_command(self) -> list[str]:
        if self.poll_interval is None:
            return [str(self._bin / "flower-supernode")]
        launcher = "secagg.protocols.flower.supernode"
        return [sys.executable, "-m", launcher, "--poll-interval", str(self.poll_interval)]

    def _worker_pids(self) -> list[int]:
        """PIDs of the nodes' warm workers (each records its own in its worker directory)."""
        pids = []
        for pid_file in (self.workdir / "workers").glob("*/worker.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text()))
        return pids

    def process_tree(self) -> list[tuple[int, str | None]]:
        """``(pid, start time)`` of every running process started here, their children, and
        the nodes' warm workers."""
        tree = []
        for process in self.processes.values():
            for pid in (process.pid, *_descendants(process.pid)):
                tree.append((pid, _start_time(pid)))
        tree += [(pid, _start_time(pid)) for pid in self._worker_pids()]
        return [(pid, started) for pid, started in tree if started is not None]

    def stop(self) -> None:
        """Stop every process started here (their children and the nodes' warm workers
        too), newest first, by PID."""
        workers = [(pid, _start_time(pid)) for pid in self._worker_pids()]
        for name in reversed(list(self.processes)):
            stop_process(self.processes.pop(name))
        for pid, started in workers:
            _signal(pid, started, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(is_running(p, s) for p, s in workers):
            time.sleep(0.1)
        for pid, started in workers:
            _signal(pid, started, signal.SIGKILL)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines of a process's log."""
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ runs
    def run(
        self, app_dir: str | os.PathLike[str], run_config: Mapping[str, Any], *, timeout: float
    ) -> float:
        """``flwr run APP_DIR`` against this SuperLink with ``run_config``; wait for the end.

        Returns the wall time in seconds.

        Raises
        ------
        DeploymentError
            If ``flwr run`` fails or takes longer than ``timeout`` seconds.
        """
        home = self.workdir / "homes" / "flwr-run"
        home.mkdir(parents=True, exist_ok=True)
        security = (
            f"root-certificates = {toml_value(str(self.certs['ca']))}\n"
            if self.tls
            else "insecure = true\n"
        )
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{HOST}:{self.port}"\n{security}',
            encoding="utf-8",
        )
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(
            "".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()), encoding="utf-8"
        )
        command = [
            str(self._bin / "flwr"),
            "run",
            str(Path(app_dir).resolve()),
            CONNECTION,
            "--stream",
            "--run-config",
            str(overrides),
        ]
        start = time.monotonic()
        process = self._start("flwr-run", command)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"flwr run did not finish in {timeout:.0f} s:\n{self.log_tail('flwr-run')}"
            ) from None
        finally:
            stop_process(self.processes.pop("flwr-run"))
        if code != 0:
            raise DeploymentError(f"flwr run exited with {code}:\n{self.log_tail('flwr-run')}")
        return time.monotonic() - start


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost (local TLS runs).

    Returns the paths of ``ca`` (CA certificate), ``cert`` (server certificate) and
    ``key`` (server private key, mode 0600).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("secagg local CA"))
        .issuer_name(name("secagg local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(HOST))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(
        paths["key"],
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    return paths


def run_local(
    config: FederationConfig,
    *,
    workdir: str | os.PathLike[str] | None = None,
    dedicated_key_holder: bool = False,
    tls: bool = False,
    timeout: float = 600.0,
    threads: int = 1,
    poll_interval: float | None = DEFAULT_POLL_INTERVAL,
) -> DeploymentResult:
    """Run ``config`` on a fresh local deployment (one SuperNode per client).

    Keys are generated into ``workdir/keys``, the app folder into ``workdir/app``, and the
    ServerApp writes its output to ``workdir/output``; without ``workdir`` a new temporary
    directory is used and kept (the result names its logs).

    Raises
    ------
    DeploymentError
        If the deployment fails to start or the run does not finish.
    """
    root = Path(workdir or tempfile.mkdtemp(prefix="secagg-flower-")).resolve()
    keys = (
        generate_keys(
            root / "keys", clients=config.clients, min_clients=config.min_clients, overwrite=True
        )
        if config.he
        else None
    )
    app = write_app(root / "app")
    output = root / "output"
    run_config = run_config_from_config(
        config,
        server_context=str(keys.server_context) if keys else "",
        registry=str(keys.registry) if keys else "",
        output=str(output),
        threads=threads,
        min_nodes=config.clients + (1 if dedicated_key_holder else 0),
        round_timeout=timeout,
        release_timeout=timeout,
        node_wait_timeout=timeout,
    )
    deployment = LocalDeployment(
        root,
        keys,
        nodes=config.clients,
        dedicated_key_holder=dedicated_key_holder,
        tls=tls,
        poll_interval=poll_interval,
    )
    with deployment:
        seconds = deployment.run(app, run_config, timeout=timeout)
        try:
            metrics = json.loads((output / METRICS_FILE).read_text())
            state = state_from_bytes((output / GLOBAL_STATE_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise DeploymentError(
                f"the ServerApp wrote no output ({exc}):\n{deployment.log_tail('superlink')}"
            ) from None
        if not metrics.get("finished"):
            raise DeploymentError(f"the run stopped early:\n{deployment.log_tail('superlink')}")
    return DeploymentResult(metrics, state, seconds, deployment.log_dir)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m secagg.protocols.flower.deploy",
        description="Run secagg on a local Flower deployment (SuperLink and SuperNodes on "
        "127.0.0.1, one SuperNode per client), then print the metrics.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="client SuperNodes (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--dataset", default="digits", help="bundled dataset (default digits: a quick demo)"
    )
    parser.add_argument(
        "--no-attention", action="store_true", help="skip the attention analysis round"
    )
    parser.add_argument("--fraction", type=float, default=1.0, help="clients sampled per round")
    parser.add_argument("--min-clients", type=int, default=2, help="fewest updates per round")
    parser.add_argument("--max-examples", type=int, help="subsample the dataset (faster)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-dp", action="store_true", help="no DP-SGD (baseline)")
    parser.add_argument("--no-he", action="store_true", help="plaintext aggregation (baseline)")
    parser.add_argument(
        "--dedicated-key-holder",
        action="store_true",
        help="one more SuperNode that only releases (default: partition 0's node does)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="TLS with a throw-away CA instead of --insecure"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        help=f"SuperNodes' idle poll in seconds (default {DEFAULT_POLL_INTERVAL})",
    )
    parser.add_argument(
        "--plain-supernode",
        action="store_true",
        help="Flower's own flower-supernode (3 s idle poll, a cold flwr-clientapp per message), "
        "for comparison",
    )
    parser.add_argument("--workdir", type=Path, help="keep keys, logs and output here")
    parser.add_argument("--timeout", type=float, default=900.0, help="most seconds for the run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m secagg.protocols.flower.deploy``."""
    args = _parse(argv)
    try:
        config = default_config(
            args.dataset,
            clients=args.nodes,
            rounds=args.rounds,
            fraction=args.fraction,
            min_clients=args.min_clients,
            max_examples=args.max_examples,
            seed=args.seed,
            dp=not args.no_dp,
            epsilon=None if args.no_dp else DEFAULT_CONFIG.epsilon,
            he=not args.no_he,
            attention_analysis=not args.no_attention,
        )
        result = run_local(
            config,
            workdir=args.workdir,
            dedicated_key_holder=args.dedicated_key_holder,
            tls=args.tls,
            timeout=args.timeout,
            poll_interval=None if args.plain_supernode else args.poll_interval,
        )
    except SecaggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for m in result.metrics["metrics"]:
        eps = "∞" if m["epsilon_max"] is None else f"{m['epsilon_max']:.2f}"
        seconds = m["seconds"]
        print(
            f"round {m['round']}: {m['status']}, accuracy {m['accuracy']:.4f}, ε {eps}, "
            f"{len(m['contributors'])}/{len(m['sampled'])} contributors, "
            f"{seconds['wall']:.1f} s ({seconds['slowest_client']:.1f} s of it the slowest "
            "client's training and encryption)"
        )
    attention = result.metrics.get("attention")
    if attention and attention["weights"]:
        order = sorted(range(len(attention["weights"])), key=lambda i: -attention["weights"][i])
        top = ", ".join(
            f"{attention['unit_names'][i]} ({attention['weights'][i]:.3f})" for i in order[:5]
        )
        print(f"attention (federation-wide, DP): {top}")
    epsilons = result.metrics.get("epsilons")
    if epsilons:
        spent = max(epsilons.values())
        print(f"ε over the whole run (largest client, attention included): {spent:.2f}")
    print(f"flwr run took {result.seconds:.1f} s; logs in {result.log_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
