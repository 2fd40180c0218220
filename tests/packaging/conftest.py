"""The packaging check runs on its own (``make package-check``): in the full suite it skips."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds the sdist and wheel and installs the wheel in a fresh venv"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.inipath is not None and config.inipath.parent == HERE:
        return
    skip = pytest.mark.skip(reason="the packaging check runs alone: make package-check")
    for item in items:
        if item.get_closest_marker("packaging"):
            item.add_marker(skip)
