"""Every claim in docs/THREAT_MODEL.md names a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_referenced_test_exists() -> None:
    text = (ROOT / "docs" / "THREAT_MODEL.md").read_text()
    references = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert len(references) >= 30
    missing = []
    for path, name in references:
        source = ROOT / path
        if not source.exists() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing


def test_readme_guarantees_table_names_existing_tests() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    references = re.findall(r"(tests/[\w/]+\.py)::(\w+)", section)
    assert len(references) >= 10
    for path, name in references:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (path, name)
