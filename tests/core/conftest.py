"""Fixtures shared by the core tests (each group in its own conftest_<group>.py)."""

from conftest_faces import dlib_analyzer, dlib_backend, tiny_analyzer, tiny_pack  # noqa: F401
