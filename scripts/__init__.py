"""Command-line scripts of the repository (the demo, the example-workflow generator, the evaluation set).

Run one as ``python scripts/<name>.py`` or ``python -m scripts.<name>`` from the repo root; tests
import them by name (``from scripts import run_demo``), the repo root being on pytest's pythonpath.
"""
