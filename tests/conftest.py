"""Shared pytest options and fixtures.

Fixture checkpoints are generated once per session (seeded) into a cache folder; the built llama.cpp
tools come from imp-gguf's own build cache (outside the repo).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.plugins.checkpoints", "tests.plugins.runtime_tools", "tests.plugins.hub_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-cross",
        action="store_true",
        default=False,
        help="skip tests that need the linux-arm64 cross build and qemu-user",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-cross"):
        return
    skip = pytest.mark.skip(reason="--no-cross given")
    for item in items:
        if "cross" in item.keywords:
            item.add_marker(skip)
