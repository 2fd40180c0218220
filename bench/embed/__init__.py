"""The parts of ``bench/embed_bench.py``: decode, encoders alone, the real worker, the report."""
