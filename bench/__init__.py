"""Benchmarks: ``python -m bench [SECTION ...] [--tiny]`` (see ``bench/__main__.py``)."""
