"""Faults: corrupted or failed checkpoint writes, failed releases, ledgers that never roll back."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny import tiny_config

import secagg
from secagg import _files
from secagg.errors import CheckpointError, ReleaseError
from secagg.protocols import (
    Checkpoint,
    Federation,
    FederationConfig,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _checkpoint(rounds: int) -> Checkpoint:
    return Checkpoint(
        config_digest="d" * 64,
        rounds_completed=rounds,
        global_state={"w": torch.full((3, 2), float(rounds))},
        server_optimizer={"m": {}, "v": {}},
        ledgers={
            "client-000": {"accountant": {"mechanism": "rdp", "history": [[1.0, 0.1, rounds]]}}
        },
        metrics=[{"round": r} for r in range(rounds)],
    )


def test_checkpoint_round_trips(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.secagg", _checkpoint(3))
    loaded = load_checkpoint(path, config_digest="d" * 64)
    assert loaded.rounds_completed == 3
    assert torch.equal(loaded.global_state["w"], torch.full((3, 2), 3.0))
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["header", "body", "tail"])
def test_corrupted_checkpoint_is_detected_by_checksum(tmp_path: Path, where: str) -> None:
    path = save_checkpoint(tmp_path / "c.secagg", _checkpoint(2))
    data = bytearray(path.read_bytes())
    index = {"header": 40, "body": len(data) // 2, "tail": len(data) - 3}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_truncated_or_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.secagg", _checkpoint(2))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nothing-here")


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "c.secagg", _checkpoint(1))
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 1:  # the first piece lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[: max(1, len(data) // 3)])

    monkeypatch.setattr(_files.os, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).rounds_completed == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_write_killed_before_the_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "c.secagg", _checkpoint(1))

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(_files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()
    assert load_checkpoint(path).rounds_completed == 1


def _tiny(**changes: Any) -> FederationConfig:
    return tiny_config(**{"clients": 3, "fraction": 1.0, **changes})


def _steps(federation: Federation) -> list[int]:
    return [sum(h[2] for h in c.accountant.history) for c in federation.clients]  # type: ignore[union-attr]


def test_failed_release_keeps_the_model_and_never_rolls_the_ledger_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    federation = Federation(_tiny(rounds=1), out_dir=tmp_path)
    before = {k: v.clone() for k, v in federation.global_state.items()}

    def refuse(_: bytes, *, min_clients: int) -> Any:
        raise ReleaseError("the key holder is unavailable")

    federation._setup_keys(resume=False)
    monkeypatch.setattr(federation, "_setup_keys", lambda resume: None)
    monkeypatch.setattr(federation._releaser, "release", refuse)
    result = federation.run()
    assert result.metrics[0].status == "failed"
    assert all(torch.equal(before[k], result.global_state[k]) for k in before)
    spent = _steps(federation)
    assert all(s > 0 for s in spent)  # the contributors' spending stays recorded
    on_disk = load_checkpoint(tmp_path / "checkpoint.secagg").ledgers
    assert [sum(h[2] for h in ledger["accountant"]["history"]) for ledger in on_disk.values()] == (
        spent
    )


def test_ledger_is_on_disk_before_the_key_holder_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    federation = Federation(_tiny(rounds=1), out_dir=tmp_path)
    federation._setup_keys(resume=False)
    monkeypatch.setattr(federation, "_setup_keys", lambda resume: None)
    seen: list[list[int]] = []
    real_release = federation._releaser.release

    def spy(aggregate: bytes, *, min_clients: int) -> Any:
        ledgers = load_checkpoint(tmp_path / "checkpoint.secagg").ledgers
        seen.append([sum(h[2] for h in v["accountant"]["history"]) for v in ledgers.values()])
        return real_release(aggregate, min_clients=min_clients)

    monkeypatch.setattr(federation._releaser, "release", spy)
    federation.run()
    assert seen and all(s > 0 for s in seen[0])


def test_committed_spending_cannot_be_discarded() -> None:
    torch.set_num_threads(1)
    federation = Federation(_tiny(rounds=1))
    federation.run()
    client = federation.clients[0]
    eps = client.epsilon()
    assert eps > 0
    client.discard_round()  # nothing pending: must not roll anything back
    assert client.epsilon() == eps


def test_key_holder_budget_is_on_disk_before_it_decrypts_and_refusals_spend_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roster = ["a", "b"]
    keys = secagg.FederationKeys.generate(roster, preset="small")
    state = tmp_path / "key-holder.secagg"
    holder = keys.key_holder(min_clients=3, state_path=state)
    aggregator = secagg.Aggregator(
        keys.server_context(), registry=keys.registry, round_id=1, roster=roster, min_clients=1
    )
    for cid in roster:
        update = {"w": torch.randn(100) * 0.01}
        aggregator.add(
            secagg.encrypt_update(
                keys.material,
                update,
                signing_key=keys.signing_keys[cid],
                round_id=1,
                roster=roster,
            )
        )
    aggregate = aggregator.finalize()
    with pytest.raises(secagg.errors.RosterError):  # the key holder's own policy: 3 clients
        holder.release(aggregate)
    reloaded = secagg.KeyHolder.open(keys.material, state)
    assert reloaded.decryptions_used == 0  # a refusal spends nothing
    assert reloaded.last_released_round == -1

    holder.min_clients = 2
    seen: list[int] = []
    real = holder.keys.session._decrypt_plaintext

    def spy(*args: Any) -> Any:
        seen.append(secagg.KeyHolder.open(keys.material, state).decryptions_used)
        return real(*args)

    monkeypatch.setattr(holder.keys.session, "_decrypt_plaintext", spy)
    holder.release(aggregate)
    assert seen == [1]  # the spending was on disk before SEAL decrypted
    assert secagg.KeyHolder.open(keys.material, state).last_released_round == 1
