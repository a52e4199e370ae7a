"""Benchmarks of the pack, the trainer and the toy world (figures in the README).

Run one as ``python benchmarks/<name>.py``; tests import them by name (``from benchmarks import
toy_world``), the repo root being on pytest's pythonpath.
"""
