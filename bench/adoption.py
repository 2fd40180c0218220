"""What adopting visualsearch takes: glue lines, torch with the image extra, Django versions.

Measures, each time it runs:

- ``oscar_glue_lines``: the lines the django-oscar example adds (``examples/oscar/count_glue.py``);
- ``wheel_check`` and ``image_extra_imports_torch``: ``tests/packaging/wheel_check.py`` builds
  the sdist and wheel, runs ``twine check --strict``, installs the wheel with only the
  ``image`` extra into a fresh venv, runs ``manage.py check`` in a generated project and
  encodes one photo, noting whether torch got imported (about a minute with pip's cache);
- ``django_versions_tested``: the Django versions of the nox sessions that passed, read from
  a ``nox --report`` file (``--run-nox`` runs the sessions first: many minutes).

    .venv/bin/python bench/adoption.py                       # reads .nox/report.json
    .venv/bin/python bench/adoption.py --run-nox             # nox --report .nox/report.json
    .venv/bin/python bench/adoption.py --nox-report FILE

Prints the figures and writes ``bench/results/adoption.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.results import RESULTS_DIR, write_json  # noqa: E402

COUNT_GLUE = BASE_DIR / "examples" / "oscar" / "count_glue.py"
WHEEL_CHECK = BASE_DIR / "tests" / "packaging" / "wheel_check.py"
NOX_REPORT = BASE_DIR / ".nox" / "report.json"
RESULT = RESULTS_DIR / "adoption.json"
#: A session's Django version, from its name: ``tests-django52`` → ``5.2``.
SESSION_DJANGO = re.compile(r"django(\d)(\d+)$")


def load(path: Path) -> ModuleType:
    """Import a script that is not on ``sys.path`` as a module."""
    if not path.exists():
        raise SystemExit(f"{path.relative_to(BASE_DIR)} is missing")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def glue_lines() -> int:
    """The Oscar example's glue lines, counted by its own script (which prints them per file)."""
    return load(COUNT_GLUE).main()


def wheel_check() -> dict:
    """The fresh-venv findings of ``tests/packaging/wheel_check.py``."""
    with tempfile.TemporaryDirectory(prefix="vs-adoption-") as workdir:
        return load(WHEEL_CHECK).check(Path(workdir))


def run_nox(report: Path) -> None:
    """Run the default nox sessions, keeping their results in ``report`` (failures included)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    nox = Path(sys.executable).with_name("nox")
    subprocess.run([str(nox), "--report", str(report)], cwd=BASE_DIR, check=False)


def django_versions(report: Path) -> tuple[list[str], dict[str, str]]:
    """The Django versions of the sessions that passed, and every session's result."""
    if not report.exists():
        print(f"no nox report at {report}: run with --run-nox, or nox --report {report}")
        return [], {}
    sessions = json.loads(report.read_text()).get("sessions", [])
    results = {session["name"]: session["result"] for session in sessions}
    versions = set()
    for name, result in results.items():
        match = SESSION_DJANGO.search(name)
        if match and result == "success":
            versions.add(f"{match[1]}.{match[2]}")
    return sorted(versions, key=lambda v: tuple(map(int, v.split(".")))), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nox-report", type=Path, default=NOX_REPORT)
    parser.add_argument("--run-nox", action="store_true", help="run the nox sessions first")
    args = parser.parse_args()

    if args.run_nox:
        run_nox(args.nox_report)
    tested, sessions = django_versions(args.nox_report)
    glue = glue_lines()
    started = time.monotonic()
    wheel = wheel_check()
    seconds = time.monotonic() - started

    print()
    for name, result in sessions.items():
        print(f"nox {name}: {result}")
    where = f"Python {wheel.get('python', '?')}, Django {wheel.get('django', '?')}"
    print(f"wheel check: {wheel['wheel_check']} in {seconds:.0f} s ({where})  {wheel['seconds']}")
    if wheel["wheel_check"] != "passed":
        print(f"  failed step {wheel['failed_step']}:\n{wheel['output']}")
    result = {
        "oscar_glue_lines": glue,
        "image_extra_imports_torch": wheel["image_extra_imports_torch"],
        "django_versions_tested": tested,
        "wheel_check": wheel["wheel_check"],
    }
    print(json.dumps(result, indent=2))
    write_json(RESULT, result)


if __name__ == "__main__":
    main()
