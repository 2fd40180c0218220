"""What the bench scripts share: statistics, result files, machine facts, Django set-up,
processes and servers, plain-text tables.

The scripts put the repository root on ``sys.path`` and import ``bench.common.*``.
"""

from pathlib import Path

#: The repository root (``bench/`` is below it).
BASE_DIR = Path(__file__).resolve().parents[2]
#: The catalog the benchmarks run on: ``products.csv`` and ``images/`` (224x224 JPEG).
DATA_DIR = BASE_DIR.parent / "shared" / "data" / "fashion-products"
