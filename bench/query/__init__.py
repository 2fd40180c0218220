"""The parts of ``bench/query_bench.py``: synthetic data, loading, indexes, query paths."""
