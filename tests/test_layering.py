"""The architecture: layers import only downwards, and the server side never loads torch.

Layers, lowest first: the shared foundations (``secagg.errors``, ``secagg._files``,
``secagg._random``), the crypto core (``secagg.crypto``), the training layer
(``secagg.dp``), the models (``secagg.models``) and the federation application
(``secagg.protocols``). A module may import its own layer and the layers below, and the
crypto core no third-party package of the training or application layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("foundation", "crypto", "dp", "models", "protocols")
FOUNDATION = {"secagg.errors", "secagg._files", "secagg._random"}
# Third-party packages each layer may not import (directly or inside a function).
FORBIDDEN = {
    "foundation": {"torch", "opacus", "flwr", "sklearn", "matplotlib", "rich", "tenseal"},
    "crypto": {"torch", "opacus", "flwr", "sklearn", "matplotlib", "rich"},
    "dp": {"flwr", "sklearn", "matplotlib", "rich"},
    "models": {"flwr", "sklearn", "matplotlib", "rich"},
    "protocols": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("models", "protocols"):
        parts = ["secagg", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str | None:
    if module in FOUNDATION:
        return "foundation"
    for layer in LAYERS[1:]:
        if module == f"secagg.{layer}" or module.startswith(f"secagg.{layer}."):
            return layer
    return None  # the facade (secagg/__init__), which resolves names lazily


def _imports(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports, anywhere in it, as absolute names."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (given its source) that break the layering."""
    layer = _layer(module)
    if layer is None:
        return []
    rank = LAYERS.index(layer)
    problems = []
    for target in sorted(_imports(source, module, is_package)):
        top = target.split(".")[0]
        if top in FORBIDDEN[layer]:
            problems.append(f"{module} imports {target}")
        if top == "secagg":
            other = _layer(target)
            if other is not None and LAYERS.index(other) > rank:
                problems.append(f"{module} imports the higher layer {target}")
    return problems


def _sources() -> list[Path]:
    return [
        p
        for folder in ("secagg", "models", "protocols")
        for p in sorted((ROOT / folder).rglob("*.py"))
    ]


def test_every_layer_imports_only_downwards() -> None:
    problems = []
    for path in _sources():
        module = _module_name(path)
        problems += violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("secagg.crypto.server", "import torch\n"),
        ("secagg.crypto.client", "def f():\n    from opacus import PrivacyEngine\n"),
        ("secagg.crypto.keys", "from ..dp.client import PrivateClient\n"),
        ("secagg.crypto.keys", "from ..protocols import Federation\n"),
        ("secagg.dp.client", "from ..protocols.plan import RunPlan\n"),
        ("secagg.models.vision", "import flwr\n"),
        ("secagg.errors", "from .crypto import wire\n"),
    ],
)
def test_the_layering_check_catches_an_upward_import(module: str, source: str) -> None:
    assert violations(source, module)


def _fresh(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_server_and_key_holder_paths_never_import_torch_or_opacus() -> None:
    code = """
import sys
import numpy as np
import secagg
roster = ["a", "b"]
keys = secagg.FederationKeys.generate(roster, preset="small")
holder = keys.key_holder(min_clients=2)
aggregator = secagg.Aggregator(keys.server_context(), registry=keys.registry, round_id=1,
                               roster=roster)
for cid in roster:
    aggregator.add(secagg.encrypt_update(keys.material, {"w": np.full(10, 0.5)},
                                         signing_key=keys.signing_keys[cid], round_id=1,
                                         roster=roster))
released = holder.release(aggregator.finalize().to_bytes())
assert abs(float(released.mean["w"][0]) - 0.5) < 1e-3
import secagg.protocols.flower.client_app
print(sorted(m for m in ("torch", "opacus") if m in sys.modules))
"""
    assert _fresh(code) == "[]"


def test_import_secagg_is_cheap_and_resolves_names_on_first_use() -> None:
    code = """
import sys
import secagg
loaded = sorted(m for m in ("torch", "opacus", "tenseal") if m in sys.modules)
client = secagg.PrivateClient  # the training layer loads when first used
print(loaded, "opacus" in sys.modules, set(secagg.__all__) <= set(dir(secagg)))
"""
    assert _fresh(code) == "[] True True"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"]])
def test_the_command_line_starts_in_under_a_second(args: list[str]) -> None:
    command = [sys.executable, "-m", "secagg.protocols.cli", *args]
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        timings.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
    assert min(timings) < 1.0, timings
