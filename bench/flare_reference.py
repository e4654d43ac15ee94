"""A FLARE-style HE reference, re-created with TenSEAL's vector API.

This mirrors NVIDIA FLARE's HE mode (``nvflare/lighter/impl/he.py`` and
``nvflare/app_opt/he/``), the production anchor secagg is compared with:

* **Provisioning** (``HEBuilder``): ``ts.context(CKKS, 8192, [60, 40, 40], SYMMETRIC)``,
  ``generate_relin_keys()``, ``global_scale = 2**40``. Clients get the context serialized
  with the secret (and public) key and relinearization keys; the server gets it with the
  relinearization keys only (``save_secret_key=False``): no key that decrypts.
* **Client** (``HEModelEncryptor``): each layer (one tensor of the update) is flattened,
  multiplied by the client's weight in plaintext (FLARE: the local step count, which
  travels in the clear), encrypted as one ``ts.ckks_vector`` and ``serialize()``-d with
  TenSEAL's defaults. A layer longer than the ``N/2 = 4096`` slots makes TenSEAL split
  it into several ciphertexts inside the vector (and print its "does not fit in a single
  ciphertext" warning, FLARE issue #2687); every layer pads its last ciphertext.
* **Server** (``HEInTimeAccumulateWeightedAggregator``): ``ts.ckks_vector_from`` each
  layer with the key-less server context, ``total = total + value``, and at the end
  ``total * (1 / Σ weights)`` in encrypted space (this consumes the 40-bit level).
* **Key holder** (``HEModelDecryptor``, on FLARE's clients): ``ckks_vector_from`` with
  the secret context and ``decrypt()``. No noise flooding is added (FLARE adds none).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

__all__ = [
    "FLARE_PARAMETERS",
    "FlareParameters",
    "FlareServer",
    "FlareStyleHE",
    "Layout",
    "layout_of",
]

#: ``(name, shape)`` of every layer, in payload order.
Layout = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class FlareParameters:
    """CKKS parameters of FLARE's ``HEBuilder`` (its defaults).

    Parameters
    ----------
    poly_modulus_degree : int
        Ring degree ``N``; a ciphertext holds ``N/2`` values.
    coeff_mod_bit_sizes : tuple of int
        Coefficient-modulus primes (the last is SEAL's special prime).
    scale_bits : int
        ``log2`` of TenSEAL's ``global_scale``.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        """Values per ciphertext (one real per complex slot in TenSEAL)."""
        return self.poly_modulus_degree // 2


FLARE_PARAMETERS = FlareParameters()


def layout_of(update: Mapping[str, Any]) -> Layout:
    """Return the ``(name, shape)`` layout of an update, in its iteration order.

    Parameters
    ----------
    update : Mapping[str, array-like]
        Layer name to tensor (numpy array or torch tensor).

    Returns
    -------
    Layout
        One ``(name, shape)`` pair per layer.
    """
    return tuple((name, _shape(value)) for name, value in update.items())


def _shape(value: Any) -> tuple[int, ...]:
    shape = value.shape if hasattr(value, "shape") else np.shape(value)
    return tuple(int(d) for d in shape)


@contextlib.contextmanager
def _quiet_native_stdout() -> Iterator[None]:
    """Silence TenSEAL's C++ ``std::cout`` warning (it bypasses Python's ``sys.stdout``)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class FlareServer:
    """FLARE's in-time accumulating aggregator, holding only the server context.

    Parameters
    ----------
    server_context : bytes
        The context serialized without a secret key (relinearization keys only).
    """

    def __init__(self, server_context: bytes) -> None:
        self.context = ts.context_from(server_context)
        if self.context.has_secret_key():
            raise ValueError("the FLARE server context must not hold the secret key")
        self._total: list[Any] | None = None
        self.weight_sum = 0.0
        self.num_contributions = 0

    def add(self, payload: Sequence[bytes], weight: float = 1.0) -> None:
        """Deserialize one client's layers and add them to the running sum.

        Parameters
        ----------
        payload : sequence of bytes
            One serialized ``ckks_vector`` per layer, from :meth:`FlareStyleHE.encrypt`.
        weight : float, optional
            The client's plaintext weight (FLARE's ``NUM_STEPS_CURRENT_ROUND``).
        """
        vectors = [ts.ckks_vector_from(self.context, layer) for layer in payload]
        if self._total is None:
            self._total = vectors
        else:
            if len(vectors) != len(self._total):
                raise ValueError("payload has another number of layers")
            self._total = [t + v for t, v in zip(self._total, vectors, strict=True)]
        self.weight_sum += float(weight)
        self.num_contributions += 1

    def finalize(self, *, divide: bool = True) -> list[bytes]:
        """Return the serialized encrypted sum (FLARE: multiplied by ``1 / Σ weights``).

        Parameters
        ----------
        divide : bool, optional
            Multiply by ``1 / Σ weights`` in encrypted space, as FLARE's ``aggregate()``
            does (default); ``False`` returns the plain encrypted sum.

        Returns
        -------
        list of bytes
            One serialized ``ckks_vector`` per layer.
        """
        if self._total is None:
            raise ValueError("no contribution was added")
        total = self._total
        if divide:
            total = [t * (1.0 / self.weight_sum) for t in total]
        return [t.serialize() for t in total]


class FlareStyleHE:
    """FLARE-style CKKS aggregation: provisioning, client encryption, server, key holder.

    Parameters
    ----------
    parameters : FlareParameters, optional
        CKKS parameters; FLARE's defaults unless given.
    quiet : bool, optional
        Silence TenSEAL's "does not fit in a single ciphertext" warning, which it prints
        from C++ for every layer longer than the slot count (default ``True``).
    """

    def __init__(
        self, parameters: FlareParameters = FLARE_PARAMETERS, *, quiet: bool = True
    ) -> None:
        self.parameters = parameters
        self.quiet = quiet
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=parameters.poly_modulus_degree,
            coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        context.generate_relin_keys()
        context.global_scale = 2**parameters.scale_bits
        #: What FLARE provisions to each client: secret + public key, relinearization keys.
        self.client_context_bytes: bytes = context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=True,
        )
        #: What FLARE provisions to the server: relinearization keys only, no secret key.
        self.server_context_bytes: bytes = context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=True,
        )
        self.context = context

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.parameters.slots

    def num_ciphertexts(self, layout: Layout) -> int:
        """Ciphertexts TenSEAL makes for ``layout``: one or more per layer, each padded.

        Parameters
        ----------
        layout : Layout
            The update's layer shapes.

        Returns
        -------
        int
            ``Σ ceil(layer size / slots)``.
        """
        return sum(max(1, -(-math.prod(shape) // self.slots)) for _, shape in layout)

    def encrypt(self, update: Mapping[str, Any], weight: float = 1.0) -> list[bytes]:
        """Weight each layer in plaintext, encrypt it as one ``ckks_vector`` and serialize it.

        Parameters
        ----------
        update : Mapping[str, array-like]
            Layer name to tensor (numpy array or CPU torch tensor).
        weight : float, optional
            The client's weight, multiplied in before encryption (FLARE's default).

        Returns
        -------
        list of bytes
            One serialized vector per layer, in the update's order.
        """
        quiet = self.quiet and any(
            math.prod(_shape(value)) > self.slots for value in update.values()
        )
        guard = _quiet_native_stdout() if quiet else contextlib.nullcontext()
        payload: list[bytes] = []
        with guard:
            for value in update.values():
                values = np.asarray(value, dtype=np.float64).ravel() * np.float64(weight)
                payload.append(ts.ckks_vector(self.context, values).serialize())
        return payload

    def server(self) -> FlareServer:
        """A fresh aggregator holding only the server context."""
        return FlareServer(self.server_context_bytes)

    def aggregate(
        self,
        payloads: Sequence[Sequence[bytes]],
        weights: Sequence[float] | None = None,
        *,
        divide: bool = True,
    ) -> list[bytes]:
        """Sum clients' payloads on a key-less server, as FLARE's aggregator does.

        Parameters
        ----------
        payloads : sequence of sequence of bytes
            One :meth:`encrypt` output per client.
        weights : sequence of float, optional
            The clients' plaintext weights (default 1 each).
        divide : bool, optional
            Multiply the sum by ``1 / Σ weights`` in encrypted space (FLARE's default).

        Returns
        -------
        list of bytes
            The serialized encrypted (weighted mean or sum) layers.
        """
        server = self.server()
        weights = [1.0] * len(payloads) if weights is None else list(weights)
        if len(weights) != len(payloads):
            raise ValueError("one weight per payload")
        for payload, weight in zip(payloads, weights, strict=True):
            server.add(payload, weight)
        return server.finalize(divide=divide)

    def decrypt(self, aggregate: Sequence[bytes], layout: Layout) -> dict[str, np.ndarray]:
        """Key holder: deserialize with the secret context and decrypt every layer.

        Parameters
        ----------
        aggregate : sequence of bytes
            From :meth:`aggregate` (or :meth:`FlareServer.finalize`).
        layout : Layout
            The update's layer names and shapes (:func:`layout_of`).

        Returns
        -------
        dict[str, numpy.ndarray]
            Layer name to decrypted values, in float64.
        """
        if len(aggregate) != len(layout):
            raise ValueError(f"{len(aggregate)} layers, but the layout has {len(layout)}")
        result: dict[str, np.ndarray] = {}
        for data, (name, shape) in zip(aggregate, layout, strict=True):
            vector = ts.ckks_vector_from(self.context, data)
            result[name] = np.asarray(vector.decrypt(), dtype=np.float64).reshape(shape)
        return result
