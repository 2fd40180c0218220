"""Settings of the worker and beat processes that tests/infra/test_faults.py starts.

The suite's settings, with the knobs a fault test turns through the environment (a child
process cannot receive ``override_settings``):

- ``VISUALSEARCH_TEST_VISIBILITY_TIMEOUT``: seconds before Redis hands an unacknowledged
  message to another worker (Celery's default is an hour), with the restore sweep run every
  second so that the timeout alone decides;
- ``VISUALSEARCH_TEST_SWEEP_AFTER``: ``SWEEP_PENDING_AFTER``;
- ``VISUALSEARCH_TEST_SWEEP_EVERY``: seconds between two sweeps sent by Celery beat;
- ``VISUALSEARCH_TEST_CLIP_MODEL``: the CLIP model directory (the encoder "changed in
  settings");
- ``VISUALSEARCH_TEST_BATCH_SIZE``: ``BATCH_SIZE`` (rows per task the sweep sends).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import CELERY_BEAT_SCHEDULE, VISUALSEARCH

VISUALSEARCH = {**VISUALSEARCH, "ENCODER_OPTIONS": {**VISUALSEARCH["ENCODER_OPTIONS"]}}

if os.environ.get("VISUALSEARCH_TEST_VISIBILITY_TIMEOUT"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": float(os.environ["VISUALSEARCH_TEST_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("VISUALSEARCH_TEST_SWEEP_AFTER"):
    VISUALSEARCH["SWEEP_PENDING_AFTER"] = float(os.environ["VISUALSEARCH_TEST_SWEEP_AFTER"])
if os.environ.get("VISUALSEARCH_TEST_SWEEP_EVERY"):
    CELERY_BEAT_SCHEDULE = {
        name: {**entry, "schedule": float(os.environ["VISUALSEARCH_TEST_SWEEP_EVERY"])}
        for name, entry in CELERY_BEAT_SCHEDULE.items()
    }
if os.environ.get("VISUALSEARCH_TEST_CLIP_MODEL"):
    VISUALSEARCH["ENCODER_OPTIONS"]["model"] = os.environ["VISUALSEARCH_TEST_CLIP_MODEL"]
if os.environ.get("VISUALSEARCH_TEST_BATCH_SIZE"):
    VISUALSEARCH["BATCH_SIZE"] = int(os.environ["VISUALSEARCH_TEST_BATCH_SIZE"])
