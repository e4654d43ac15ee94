"""The aggregation schemes compared, behind one small interface (:class:`Scheme`).

* ``plaintext``: secagg's ``--no-he`` baseline (``PlaintextPayloads``,
  ``round_server(he=False)`` and ``PlaintextRelease`` of
  :mod:`secagg.protocols.backends`): a framed float64 weighted update summed in numpy,
  the floor.
* ``flare``: the FLARE-style TenSEAL reference (:mod:`bench.flare_reference`).
* ``secagg:<preset>``: secagg with a preset of :data:`secagg.PRESETS`
  (:func:`secagg.encrypt_update`, :class:`secagg.Aggregator`, :meth:`secagg.KeyHolder.release`),
  encrypting in one process (``workers=1``, as TenSEAL does). Suffixes: ``/auto`` for
  the library's default parallelism, ``/nomac`` for the same encryption with the MAC's
  work switched off (:func:`bench._mac_patch.null_mac`; for timing only: such payloads
  do not verify).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

import secagg
from secagg.protocols.backends import PlaintextPayloads, PlaintextRelease, round_server

from ._mac_patch import null_mac
from .flare_reference import FlareStyleHE, Layout, layout_of
from .updates import WEIGHT_BOUND

__all__ = [
    "ROUND_ID",
    "FlareScheme",
    "PlaintextScheme",
    "Release",
    "Scheme",
    "SecaggScheme",
    "ServerSession",
    "make_scheme",
    "max_clients_of",
    "roster",
    "scheme_names",
]

ROUND_ID = 1


def roster(clients: int) -> list[str]:
    """Client ids ``client-000``, ``client-001``, ... of a round of ``clients``."""
    return [f"client-{i:03d}" for i in range(clients)]


@dataclass(frozen=True)
class Release:
    """What a key holder releases: the weighted mean and its stated error.

    Attributes
    ----------
    mean : Mapping[str, Any]
        Tensor name to the weighted mean (numpy arrays or torch tensors).
    error_std : float or None
        The standard deviation of each coordinate's error the scheme states (secagg:
        ``ReleasedAggregate.mean_error_std``; plaintext: 0), ``None`` if it states none.
    """

    mean: Mapping[str, Any]
    error_std: float | None


class ServerSession(Protocol):
    """The server side of one round of a scheme."""

    def add(self, payload: Any, weight: float) -> None:
        """Validate (where the scheme does) and fold one client's payload into the sum."""
        ...

    def finalize(self) -> Any:
        """Return the aggregate as it is sent to the key holder."""
        ...


class Scheme(Protocol):
    """One aggregation scheme: client, server and key-holder roles."""

    name: str
    kind: str
    distinct_payloads: bool
    max_clients: int | None
    roster: list[str]

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> Any:
        """Client ``client``'s wire payload for ``update`` with weight ``weight``."""
        ...

    def payload_nbytes(self, payload: Any) -> int:
        """Bytes of a payload on the wire."""
        ...

    def server(self) -> ServerSession:
        """A fresh server for one round."""
        ...

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Bytes of the aggregate sent to the key holder."""
        ...

    def release(self, aggregate: Any) -> Release:
        """Key holder: the weighted mean update from the aggregate."""
        ...

    def reset_release(self) -> None:
        """Make the key holder ready to release the round again (for repeated timing)."""
        ...

    def provisioning(self) -> dict[str, bytes]:
        """The files the server is given (``context``, ``registry``; none for plaintext)."""
        ...

    def to_file_bytes(self, payload: Any) -> bytes:
        """A payload as one byte string (for the server-memory subprocess)."""
        ...


class _BytesSession:
    """A server whose ``add`` takes the payload only and whose aggregate is bytes."""

    def __init__(self, server: Any, finalize: Any) -> None:
        self._server = server
        self._finalize = finalize

    def add(self, payload: Any, weight: float) -> None:
        self._server.add(payload)

    def finalize(self) -> Any:
        return self._finalize(self._server)


class PlaintextScheme:
    """secagg's plaintext baseline: framed float64 weighted updates, numpy sum.

    Parameters
    ----------
    clients : int
        Roster size of the round.
    """

    kind = "plaintext"
    distinct_payloads = True

    def __init__(self, clients: int) -> None:
        self.name = "plaintext"
        self.max_clients: int | None = None
        self.roster = roster(clients)

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> bytes:
        """Frame ``weight / bound · update`` in the clear (float64)."""
        return PlaintextPayloads(self.roster[client]).payload(
            update, weight=weight, weight_bound=WEIGHT_BOUND, round_id=ROUND_ID, roster=self.roster
        )

    def payload_nbytes(self, payload: Any) -> int:
        """Length of the framed payload."""
        return len(payload)

    def server(self) -> ServerSession:
        """``round_server(he=False)``: a numpy weighted sum."""
        server = round_server(he=False, round_id=ROUND_ID, roster=self.roster, min_clients=1)
        return _BytesSession(server, lambda s: s.finalize())

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Length of the framed sum."""
        return len(aggregate)

    def release(self, aggregate: Any) -> Release:
        """``PlaintextRelease``: the sum divided by the weight sum (no stated error)."""
        return Release(PlaintextRelease().release(aggregate, min_clients=1).mean, 0.0)

    def reset_release(self) -> None:
        """Nothing to reset."""

    def provisioning(self) -> dict[str, bytes]:
        """Nothing: the plaintext server needs no file."""
        return {}

    def to_file_bytes(self, payload: Any) -> bytes:
        """The payload itself."""
        return bytes(payload)


class FlareScheme:
    """The FLARE-style TenSEAL reference (:class:`bench.flare_reference.FlareStyleHE`).

    Its server cannot tell clients apart from the ciphertexts, so re-sending a payload
    costs the server what a new one would (``distinct_payloads`` is ``False``).
    """

    kind = "flare"
    distinct_payloads = False

    def __init__(self, clients: int = 2) -> None:
        self.name = "flare"
        self.max_clients: int | None = None
        self.roster = roster(clients)
        self.he = FlareStyleHE()
        self.layout: Layout = ()

    def encrypt(
        self, update: Mapping[str, torch.Tensor], *, client: int, weight: float
    ) -> list[bytes]:
        """One serialized ``ckks_vector`` per layer, weighted in plaintext."""
        self.layout = layout_of(update)
        return self.he.encrypt(update, weight)

    def payload_nbytes(self, payload: Any) -> int:
        """Sum of the serialized layers."""
        return sum(len(layer) for layer in payload)

    def server(self) -> ServerSession:
        """FLARE's in-time accumulating aggregator with the key-less server context."""
        return self.he.server()

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Sum of the serialized aggregate layers."""
        return sum(len(layer) for layer in aggregate)

    def release(self, aggregate: Any) -> Release:
        """Deserialize with the secret context and decrypt each layer (no stated error)."""
        return Release(self.he.decrypt(aggregate, self.layout), None)

    def reset_release(self) -> None:
        """Nothing to reset."""

    def provisioning(self) -> dict[str, bytes]:
        """The context with relinearization keys only."""
        return {"context": self.he.server_context_bytes}

    def to_file_bytes(self, payload: Any) -> bytes:
        """Pickle of the list of layers (a trusted local temporary file)."""
        return pickle.dumps(list(payload))


class SecaggScheme:
    """secagg with one preset: ``encrypt_update``, ``Aggregator``, ``KeyHolder.release``.

    Parameters
    ----------
    preset : str
        A name in :data:`secagg.PRESETS`.
    clients : int
        Roster size of the round (at most the preset's ``max_clients``).
    workers : int or None, optional
        Encryption processes; ``1`` (default) for one core, ``None`` for secagg's default.
    mac : bool, optional
        ``False`` switches the MAC's work off during encryption (timing only).
    decryption_budget : int, optional
        The key holder's budget; only the flooding σ depends on it, not the time.

    Raises
    ------
    ValueError
        If ``clients`` exceeds the preset's ``max_clients``.
    """

    kind = "secagg"
    distinct_payloads = True

    def __init__(
        self,
        preset: str,
        clients: int,
        *,
        workers: int | None = 1,
        mac: bool = True,
        decryption_budget: int = 1 << 16,
    ) -> None:
        self.preset = secagg.get_preset(preset)
        if clients > self.preset.max_clients:
            raise ValueError(f"preset {preset!r} holds at most {self.preset.max_clients} clients")
        self.max_clients: int | None = self.preset.max_clients
        self.name = (
            "secagg:" + preset + ("/auto" if workers is None else "") + ("" if mac else "/nomac")
        )
        self.workers = workers
        self.mac = mac
        self.roster = roster(clients)
        self.decryption_budget = decryption_budget
        self.keys = secagg.FederationKeys.generate(self.roster, preset=preset)
        self.holder = self._key_holder()

    def _key_holder(self) -> secagg.KeyHolder:
        return self.keys.key_holder(min_clients=1, decryption_budget=self.decryption_budget)

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> bytes:
        """``secagg.encrypt_update`` for roster position ``client``."""
        guard = contextlib.nullcontext() if self.mac else null_mac()
        with guard:
            return secagg.encrypt_update(
                self.keys.material,
                update,
                signing_key=self.keys.signing_keys[self.roster[client]],
                round_id=ROUND_ID,
                roster=self.roster,
                weight=weight,
                weight_bound=WEIGHT_BOUND,
                workers=self.workers,
            )

    def payload_nbytes(self, payload: Any) -> int:
        """Length of the signed payload."""
        return len(payload)

    def server(self) -> ServerSession:
        """An ``Aggregator`` loaded from the server context bytes (no key) and the registry."""
        aggregator = secagg.Aggregator(
            self.keys.material.server_context(),
            registry=self.keys.registry,
            round_id=ROUND_ID,
            roster=self.roster,
            min_clients=1,
        )
        return _BytesSession(aggregator, lambda a: a.finalize().to_bytes())

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Length of the serialized aggregate (summed ``c0`` and every contributor's seeds)."""
        return len(aggregate)

    def release(self, aggregate: Any) -> Release:
        """``KeyHolder.release``: parse, check, verify the MAC, decrypt, dequantise or flood."""
        released = self.holder.release(aggregate)
        return Release(released.mean, released.mean_error_std)

    def reset_release(self) -> None:
        """A fresh key holder (a key holder releases each round once)."""
        self.holder = self._key_holder()

    def provisioning(self) -> dict[str, bytes]:
        """The server context (no key) and the client registry (public keys)."""
        return {
            "context": self.keys.material.server_context(),
            "registry": self.keys.registry.to_bytes(),
        }

    def to_file_bytes(self, payload: Any) -> bytes:
        """The payload itself."""
        return bytes(payload)


def scheme_names(*, auto_workers: bool = False) -> list[str]:
    """Every scheme measured: plaintext, FLARE-style and one per secagg preset."""
    names = ["plaintext", "flare", *(f"secagg:{p}" for p in secagg.PRESETS)]
    if auto_workers:
        names.append("secagg:default/auto")
    return names


def max_clients_of(name: str) -> int | None:
    """The most clients one round of scheme ``name`` holds (``None``: no limit)."""
    if name.startswith("secagg:"):
        preset = name.removeprefix("secagg:").split("/")[0]
        return secagg.get_preset(preset).max_clients
    return None


def make_scheme(name: str, clients: int, *, decryption_budget: int = 1 << 16) -> Scheme:
    """Build a scheme by name for a roster of ``clients`` (fresh keys).

    Parameters
    ----------
    name : str
        ``"plaintext"``, ``"flare"`` or ``"secagg:<preset>"`` with optional ``/auto``
        and ``/nomac`` suffixes.
    clients : int
        Roster size.
    decryption_budget : int, optional
        secagg key holder's decryption budget.

    Raises
    ------
    ValueError
        On an unknown name or suffix.
    """
    if name == "plaintext":
        return PlaintextScheme(clients)
    if name == "flare":
        return FlareScheme(clients)
    if name.startswith("secagg:"):
        preset, *modes = name.removeprefix("secagg:").split("/")
        unknown = set(modes) - {"auto", "nomac"}
        if unknown:
            raise ValueError(f"unknown scheme suffixes {sorted(unknown)} in {name!r}")
        return SecaggScheme(
            preset,
            clients,
            workers=None if "auto" in modes else 1,
            mac="nomac" not in modes,
            decryption_budget=decryption_budget,
        )
    raise ValueError(f"unknown scheme {name!r}")
