"""Today's path, for measuring against in the same run: the query modules as they were at
``COMMIT`` (before issue 21), loaded from git, and a context manager that swaps their
functions in for the current ones."""

from __future__ import annotations

import contextlib
import subprocess
import types
from unittest import mock

from bench.common import BASE_DIR

#: The commit whose query path is "today's path" (issue 21's baseline).
COMMIT = "eed5ce2"
#: Module -> the functions of it the new path changed (swapped back for the baseline).
SWAPPED = {
    "visualsearch.query.knn": ["_run", "compact_filters"],
    "visualsearch.query.diversity": [
        "product_vectors",
        "vectors_by_product",
        "sample_pks",
        "coverage",
        "maximal_marginal_relevance",
    ],
    "visualsearch.query.recommend": ["preference_vector", "compact_filters", "_load"],
}

_loaded: dict[str, types.ModuleType] = {}


def old_module(name: str) -> types.ModuleType:
    """Module ``name`` as it was at ``COMMIT`` (its own globals: old calls old)."""
    if name not in _loaded:
        path = name.replace(".", "/") + ".py"
        source = subprocess.run(
            ["git", "show", f"{COMMIT}:{path}"],
            cwd=BASE_DIR,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        module = types.ModuleType(f"baseline_{name.rsplit('.', 1)[1]}")
        module.__file__ = str(BASE_DIR / path)
        exec(compile(source, f"{COMMIT}:{path}", "exec"), module.__dict__)
        _loaded[name] = module
    return _loaded[name]


@contextlib.contextmanager
def today():
    """Run the block on today's path (the functions of ``COMMIT``)."""
    import importlib

    with contextlib.ExitStack() as stack:
        for name, functions in SWAPPED.items():
            current, old = importlib.import_module(name), old_module(name)
            for function in functions:
                if hasattr(current, function):
                    replacement = getattr(old, function, _unchanged)  # new: not there
                    if function == "_run":
                        replacement = _own_statements(replacement)
                    swap = mock.patch.object(current, function, replacement)
                    stack.enter_context(swap)
        yield


def _unchanged(filters):
    return filters


def _own_statements(run):
    """Today's ``_run`` on statements of its own: the same SQL text would share one prepared
    statement (and its cached generic plan) with the new path, which sets ``enable_sort`` off
    while it plans."""

    def baseline_run(sql, *args, **kwargs):
        return run("/* today's path */ " + sql, *args, **kwargs)

    return baseline_run
