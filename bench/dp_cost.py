"""DP-SGD step overhead: one step of ``PrivateClient`` (Opacus hooks) against plain SGD.

Both models are a dataset's default model with the same initial weights and SGD; a
step is ``zero_grad``, forward, cross-entropy, backward and ``optimizer.step()`` on the
same batch (no Poisson sampling, so both see exactly that batch). The DP step clips
per-example gradients and adds Gaussian noise from the OS CSPRNG.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .updates import load_dataset

__all__ = ["DPSteps", "dp_step_overhead", "make_dp_steps"]


@dataclass
class DPSteps:
    """One plain and one DP-SGD training step of a dataset's default model, same batch.

    Build with :func:`make_dp_steps`; call :meth:`close` to detach Opacus hooks.
    """

    dataset: str
    model: str
    params: int
    batch_size: int
    plain_step: Callable[[], None]
    private_step: Callable[[], None]
    close: Callable[[], None]


def _step(model: torch.nn.Module, optimizer: Any, batch: tuple[Any, Any]) -> Callable[[], None]:
    inputs, labels = batch

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def make_dp_steps(dataset: str, *, batch_size: int = 64, max_examples: int | None = 600) -> DPSteps:
    """Build a plain and a DP-SGD step (``PrivateClient``) on one fixed batch.

    Parameters
    ----------
    dataset : str
        A bundled dataset's name.
    batch_size : int, optional
        Examples per step.
    max_examples : int or None, optional
        Subsample the dataset (only one batch is used).

    Returns
    -------
    DPSteps
        The two step functions and a ``close`` that detaches the Opacus hooks.
    """
    from secagg.dp.client import PrivateClient

    data = load_dataset(dataset, max_examples)
    count = min(batch_size, data.num_train)
    batch = (data.x_train[:count], data.y_train[:count])
    torch.manual_seed(0)
    plain_model = data.default_model()
    private_model = data.default_model()
    private_model.load_state_dict(plain_model.state_dict())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=count
    )
    private = PrivateClient(
        module=private_model,
        optimizer=torch.optim.SGD(private_model.parameters(), lr=0.01),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    plain_model.train()
    private_model.train()
    return DPSteps(
        dataset=dataset,
        model=type(plain_model).__name__,
        params=sum(p.numel() for p in plain_model.parameters() if p.requires_grad),
        batch_size=count,
        plain_step=_step(plain_model, torch.optim.SGD(plain_model.parameters(), lr=0.01), batch),
        private_step=_step(private_model, private.optimizer, batch),
        close=private.close,
    )


def _timed_steps(step: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _alternate(pair: DPSteps, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    _timed_steps(pair.plain_step, warmup)
    _timed_steps(pair.private_step, warmup)
    plain: list[float] = []
    private: list[float] = []
    for _ in range(steps):
        plain += _timed_steps(pair.plain_step, 1)
        private += _timed_steps(pair.private_step, 1)
    return plain, private


def dp_step_overhead(
    dataset: str,
    *,
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 2,
    max_examples: int | None = 600,
    threads: int = 1,
) -> dict[str, Any]:
    """Median time of a DP-SGD step against a plain step, measured alternately.

    Steps alternate between the two modes (plain, private, plain, ...) so both run
    under the same background load; see :func:`make_dp_steps` for what a step is.

    Parameters
    ----------
    dataset : str
        A bundled dataset's name.
    batch_size : int, optional
        Examples per step.
    steps : int, optional
        Timed steps per mode.
    warmup : int, optional
        Untimed steps per mode first.
    max_examples : int or None, optional
        Subsample the dataset (only one batch is used).
    threads : int, optional
        ``torch.set_num_threads`` while measuring (restored afterwards).

    Returns
    -------
    dict
        ``plain_s`` and ``private_s`` (median seconds per step), ``ratio``, ``params``…
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pair = make_dp_steps(dataset, batch_size=batch_size, max_examples=max_examples)
        try:
            plain, private = _alternate(pair, steps, warmup)
        finally:
            pair.close()
    finally:
        torch.set_num_threads(previous)
    plain_s, private_s = statistics.median(plain), statistics.median(private)
    return {
        "dataset": dataset,
        "model": pair.model,
        "params": pair.params,
        "batch_size": pair.batch_size,
        "steps": steps,
        "threads": threads,
        "plain_s": plain_s,
        "private_s": private_s,
        "ratio": private_s / plain_s,
        "plain_all_s": plain,
        "private_all_s": private,
    }
