"""Fixtures of the trainer tests: the tiny insightface pack, raw images and a prepared dataset."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import PACK, build_prepare_models, prepare_args, write_raw_folder


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core CI box: one intra-op thread is ~20x faster than two
    threads fighting other processes (measured: 0.2 s vs 8 s per tiny forward at load 10)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pack_root(tiny_pack) -> str:
    """An insightface root with models/tinypack/ (toy SCRFD detector + tiny one-pass recognizer): the
    face tests' ``tiny_pack`` (tests/core/conftest_faces.py), built once per session."""
    root, pack, _ = tiny_pack
    assert pack == PACK
    return root


@pytest.fixture(scope="session")
def raw_folder(tmp_path_factory):
    return write_raw_folder(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def prepared(raw_folder, pack_root, tmp_path_factory):
    """The raw folder through `python -m train.prepare` (2 shards of up to 4 images)."""
    from train.prepare import main

    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("prepared")
    assert main(prepare_args([raw_folder], output, pack_root, PACK)) == 0
    return output


@pytest.fixture(scope="session")
def prepare_models(tmp_path_factory) -> dict:
    """DWPose ONNX stand-ins and a tiny random BLIP captioner, for the prepare pipeline tests."""
    return build_prepare_models(tmp_path_factory.mktemp("prepare_models"))
