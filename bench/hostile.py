"""Hostile input and abuse (issue 19): what the worst search photos cost, whether a rotating
``X-Forwarded-For`` escapes the throttle, and how many of the ten findings are fixed.

    VISUALSEARCH_TEST_DB=test_bench_hostile .venv/bin/python bench/hostile.py

1. Every file of ``tests/api/hostile_images.HOSTILE`` (huge PNGs in every colour type and
   depth, JPEGs of 40 MP, progressive and CMYK ones, GIFs with many frames, WebP, AVIF,
   metadata floods, TIFF and BMP) is opened as a search photo in a child process of its own:
   peak RSS over the child's baseline and CPU seconds of ``open_query_image``.
2. The real throttle at ``1/minute``, in the demo shop's settings and its Redis cache: five
   requests through Django's test client, each claiming another ``X-Forwarded-For``, to the
   API and to the search page. Every answer but the first one's that is not a 429 got past.
3. ``tests/api/test_abuse.py`` under pytest (the database ``VISUALSEARCH_TEST_DB``): a finding
   counts as fixed when every test of it passes.

Prints a table and writes ``bench/results/hostile.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402

#: The tests of each finding of issue 19, in tests/api/test_abuse.py (names as pytest gives
#: them, parameters left out).
FINDINGS = {
    "stored XSS through import file names": [
        "test_import_names_files_after_their_decoded_format",
        "test_uploaded_media_is_never_served_as_a_page",
    ],
    "query-image amplification": [
        "test_any_search_photo_costs_bounded_memory_and_cpu",
        "test_a_large_phone_photo_is_still_searchable",
    ],
    "throttle bypass": [
        "test_rotating_x_forwarded_for_does_not_escape_the_throttle",
        "test_num_proxies_counts_the_address_the_proxy_saw",
        "test_search_page_is_throttled_with_the_api_budget",
    ],
    "temporary files per request": ["test_a_search_request_keeps_one_file"],
    "widget cache race": ["test_a_widget_rendered_while_the_data_changes_is_not_cached_as_current"],
    "overwriting storages": ["test_a_file_uploaded_again_under_the_same_name_is_embedded_again"],
    "session settings leak": [
        "test_query_settings_end_with_the_query_inside_a_transaction",
        "test_query_settings_apply_to_the_query_itself",
    ],
    "anonymous home page cost": [
        "test_a_cookieless_home_page_visit_saves_no_session",
        "test_exploration_picks_never_sort_the_product_table_at_random",
    ],
    "projection file modes": [
        "test_a_saved_projection_is_readable_by_other_users",
        "test_an_unreadable_projection_is_a_clear_error",
        "test_a_broken_projection_does_not_take_the_home_page_down",
    ],
    "shop defaults": [
        "test_debug_is_off_unless_asked",
        "test_no_known_key_without_debug",
        "test_localhost_is_not_an_allowed_host_without_debug",
        "test_check_deploy_is_clean_in_the_compose_stack",
    ],
}
RATE = "1/minute"
REQUESTS = 5


def measure_images(folder: Path) -> list[dict]:
    """Each hostile file written to ``folder`` and measured in a child process of its own."""
    from tests.api.hostile_images import HOSTILE, measure

    rows = []
    for name, make in HOSTILE.items():
        path = folder / name
        path.write_bytes(make())
        cost = measure(path)
        rows.append({"name": name, "kb": path.stat().st_size // 1024, **cost})
        print(f"{name:28} {rows[-1]['kb']:>7} KB {cost['rss_mb']:>7.1f} MB {cost['cpu_s']:>6.3f} s"
              f"  {cost['outcome'][:60]}", flush=True)  # fmt: skip
    return rows


def xff_bypass() -> int:
    """Requests beyond the budget of one that the throttle let through, API and search page."""
    setup_django("vs_hostile_bench", visualsearch={"API_THROTTLE_RATE": RATE})
    from django.core.cache import caches
    from django.core.management import call_command
    from django.test import Client

    from visualsearch.api.throttling import SearchRateThrottle
    from visualsearch.conf import visualsearch_settings

    call_command("migrate", verbosity=0)
    cache = caches[visualsearch_settings.CACHE_ALIAS]
    throttle = SearchRateThrottle()
    key = throttle.cache_format % {"scope": throttle.scope, "ident": "127.0.0.1"}
    passed = 0
    # The API answers 400 (no q) and the page 200 when they are let through; 429 otherwise.
    for url in ("/api/search/text/", "/search/?q="):
        cache.delete(key)
        client = Client()
        codes = [
            client.get(url, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code
            for i in range(1, REQUESTS + 1)
        ]
        print(f"{url:24} rotating X-Forwarded-For at {RATE}: {codes}")
        passed += sum(code != 429 for code in codes) - 1
    cache.delete(key)
    return passed


def findings_fixed(database: str) -> tuple[int, dict[str, bool]]:
    """Findings whose tests all pass, from a pytest run of tests/api/test_abuse.py."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        env = {**os.environ, "VISUALSEARCH_TEST_DB": database}
        subprocess.run(
            [sys.executable, "-m", "pytest", "tests/api/test_abuse.py", "-q",
             "-p", "no:cacheprovider", f"--junitxml={report}"],
            cwd=BASE_DIR, env=env, check=False,
        )  # fmt: skip
        cases = ElementTree.parse(report).getroot().iter("testcase")
        outcomes: dict[str, list[bool]] = {}
        for case in cases:
            name = case.get("name", "").split("[")[0]
            failed = any(child.tag in {"failure", "error", "skipped"} for child in case)
            outcomes.setdefault(name, []).append(not failed)
    fixed = {
        finding: all(all(outcomes.get(test, [False])) for test in tests)
        for finding, tests in FINDINGS.items()
    }
    return sum(fixed.values()), fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "hostile.json")
    parser.add_argument(
        "--test-db",
        default=os.environ.get("VISUALSEARCH_TEST_DB", "test_bench_hostile"),
        help="test database of the pytest run (default: VISUALSEARCH_TEST_DB)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = measure_images(Path(folder))
    bypassed = xff_bypass()
    count, fixed = findings_fixed(args.test_db)
    for finding, ok in fixed.items():
        print(f"{'fixed' if ok else 'OPEN ':5}  {finding}")
    write_json(
        args.out,
        {
            "max_query_rss_mb": max(row["rss_mb"] for row in rows),
            "max_query_cpu_s": max(row["cpu_s"] for row in rows),
            "xff_bypass_passed": bypassed,
            "findings_fixed": count,
        },
    )


if __name__ == "__main__":
    main()
