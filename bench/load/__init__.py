"""The parts of ``bench/load_test.py``: the traffic, the servers, the printed summary."""
