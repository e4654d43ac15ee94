"""Flatten / unflatten: exact round trips over random layouts; anything but floats refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import secagg
from secagg.crypto.spec import UpdateSpec, flatten_update, unflatten_update
from secagg.dp.tensors import to_torch
from secagg.errors import FormatError, SpecMismatchError, UpdateValueError

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPECIAL = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 1e-40, 65504.0, -3.5e38]


@st.composite
def updates(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 5))
    names = draw(
        st.lists(st.text(min_size=1, max_size=12), min_size=count, max_size=count, unique=True)
    )
    out: dict[str, torch.Tensor] = {}
    for name in names:
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        values = draw(
            st.lists(
                st.one_of(
                    st.floats(allow_nan=False, width=64, min_value=-1e6, max_value=1e6),
                    st.sampled_from(SPECIAL),
                ),
                min_size=numel,
                max_size=numel,
            )
        )
        out[name] = torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)
    return out


@settings(max_examples=150, deadline=None)
@given(updates())
def test_flatten_unflatten_round_trips_exactly(update: dict[str, torch.Tensor]) -> None:
    assume(any(t.numel() for t in update.values()))  # an update of no values is refused
    flat, spec = flatten_update(update)
    assert flat.dtype == np.float64
    assert flat.shape == (spec.numel,)
    assert spec.numel == sum(t.numel() for t in update.values())
    arrays = unflatten_update(flat, spec)
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    back = to_torch(arrays, spec)
    assert list(back) == list(update)
    for name, tensor in update.items():
        assert back[name].dtype == tensor.dtype
        assert back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor)
        # bit-exact, including the sign of zero
        assert torch.equal(torch.signbit(back[name]), torch.signbit(tensor))
    # the layout survives its JSON form and hashes stably
    again = UpdateSpec.from_json(spec.to_json())
    assert again == spec
    assert again.spec_hash == spec.spec_hash


def test_spec_hash_depends_on_names_shapes_dtypes_and_order() -> None:
    base = {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.float64)}
    variants = [
        {"a": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.float64)},
        {"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros(4, dtype=torch.float64)},
        {"c": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.float64)},
        {"b": torch.zeros(4, dtype=torch.float64), "a": torch.zeros(2, 3)},
    ]
    hashes = {flatten_update(v)[1].spec_hash for v in [base, *variants]}
    assert len(hashes) == 1 + len(variants)
    assert flatten_update(dict(base))[1].spec_hash == flatten_update(base)[1].spec_hash


@settings(max_examples=60, deadline=None)
@given(updates())
def test_numpy_updates_round_trip_exactly(update: dict[str, torch.Tensor]) -> None:
    as_numpy = {name: t.numpy() for name, t in update.items() if t.dtype != torch.bfloat16}
    assume(any(a.size for a in as_numpy.values()))
    flat, spec = flatten_update(as_numpy)
    back = unflatten_update(flat, spec)
    for name, array in as_numpy.items():
        assert back[name].dtype == array.dtype
        assert back[name].shape == array.shape
        assert np.array_equal(back[name], array)
        assert np.array_equal(np.signbit(back[name]), np.signbit(array))
    # A numpy array and the torch tensor of the same values have the same layout.
    assert flatten_update({k: torch.from_numpy(v) for k, v in as_numpy.items()})[1] == spec


BAD_ENTRIES = {
    "int64": torch.zeros(3, dtype=torch.int64),
    "int32": torch.zeros(3, dtype=torch.int32),
    "uint8": torch.zeros(3, dtype=torch.uint8),
    "bool": torch.zeros(3, dtype=torch.bool),
    "complex64": torch.zeros(3, dtype=torch.complex64),
    "meta": torch.empty(3, device="meta"),
    "sparse": torch.zeros(3).to_sparse(),
    "numpy-int": np.zeros(3, dtype=np.int64),
    "numpy-complex": np.zeros(3, dtype=np.complex128),
    "numpy-object": np.array([1.0, None]),
    "numpy-big-endian": np.zeros(3, dtype=">f8"),
    "list": [1.0, 2.0],
    "float": 1.0,
    "none": None,
}


@pytest.mark.parametrize("bad", sorted(BAD_ENTRIES))
def test_entries_that_are_not_dense_real_floats_are_rejected(
    bad: str, small_federation: secagg.FederationKeys
) -> None:
    update = {"ok": torch.zeros(2), "bad": BAD_ENTRIES[bad]}
    with pytest.raises(UpdateValueError, match="bad") as info:
        flatten_update(update)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UpdateValueError):
        secagg.encrypt_update(
            small_federation.material,
            update,
            signing_key=small_federation.signing_keys["a"],
            round_id=0,
            roster=["a"],
        )


@pytest.mark.parametrize(
    "update",
    [
        {},
        None,
        [np.zeros(3)],
        {"x": torch.empty(0)},
        {"x": np.empty((0, 4))},
        {"x": torch.empty(0), "y": np.empty(0, dtype=np.float32)},
        {1: np.zeros(3)},
        {"": np.zeros(3)},
    ],
    ids=[
        "empty",
        "none",
        "list",
        "empty-tensor",
        "empty-array",
        "all-empty",
        "int-name",
        "no-name",
    ],
)
def test_empty_or_unnamed_updates_are_rejected(
    update: object, small_federation: secagg.FederationKeys
) -> None:
    with pytest.raises(UpdateValueError):
        flatten_update(update)  # type: ignore[arg-type]
    with pytest.raises(UpdateValueError):
        secagg.encrypt_update(
            small_federation.material,
            update,  # type: ignore[arg-type]
            signing_key=small_federation.signing_keys["a"],
            round_id=0,
            roster=["a"],
        )


def test_empty_entries_beside_real_ones_keep_their_place() -> None:
    update = {"a": np.ones(2), "e": np.empty((0, 3)), "b": np.full(1, 2.0)}
    flat, spec = flatten_update(update)
    assert flat.tolist() == [1.0, 1.0, 2.0]
    back = unflatten_update(flat, spec)
    assert back["e"].shape == (0, 3)
    assert back["b"].tolist() == [2.0]


def test_unflatten_refuses_a_vector_of_the_wrong_length() -> None:
    _, spec = flatten_update({"a": torch.zeros(2, 3)})
    with pytest.raises(SpecMismatchError):
        unflatten_update(np.zeros(5), spec)
    with pytest.raises(SpecMismatchError):
        unflatten_update(np.zeros((2, 3)), spec)


@pytest.mark.parametrize(
    "data",
    [
        [],
        "x",
        [["a", [2], "int64"]],
        [["a", [-1], "float32"]],
        [["a", [2], "float32"], ["a", [3], "float32"]],
        [["a", [2.0], "float32"]],
        [["a", [2], "float32", 1]],
        [["a", [2], ["float32"]]],  # an unhashable dtype must not escape as TypeError
        [["a", [2], {"dtype": "float32"}]],
        [["a", [True], "float32"]],
    ],
    ids=str,
)
def test_spec_from_json_rejects_invalid_layouts(data: object) -> None:
    with pytest.raises(FormatError):
        UpdateSpec.from_json(data)
