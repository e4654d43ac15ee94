"""The README's training-loop example runs exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import secagg

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError("README has no marked example")
    return match.group(1)


def test_example_is_a_short_loop_with_four_secagg_lines() -> None:
    code = readme_example()
    assert code.count("# secagg") == 4
    assert "secagg.models" not in code  # a user's own model, not ours


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_training_loop_runs_and_produces_a_verifiable_update() -> None:
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    client = namespace["client"]
    federation = namespace["federation"]
    payload = namespace["payload"]
    assert isinstance(client, secagg.PrivateClient)
    assert isinstance(federation, secagg.FederationKeys)
    assert isinstance(payload, bytes)
    assert client.epsilon() > 0
    update = secagg.EncryptedUpdate.from_bytes(payload)
    assert update.client_id == "hospital-a" and update.round_id == 1
    roster = ["hospital-a", "hospital-b"]
    aggregator = secagg.Aggregator(
        federation.server_context(),
        registry=federation.registry,
        round_id=1,
        roster=roster,
        min_clients=1,
    )
    aggregator.add(payload)
    # the key holder's policy: this test releases one client's update
    released = federation.key_holder(min_clients=1).release(aggregator.finalize())
    assert released.contributors == ("hospital-a",)
    for name, tensor in client.model_update().items():
        assert released.mean[name].shape == tuple(tensor.shape)
        error = float(abs(released.mean[name] - tensor.numpy()).max())
        assert error < 50 * released.mean_error_std
