"""The parts of ``bench/quality.py``: the labels, the metrics, the printed table."""
