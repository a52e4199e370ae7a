"""Model-pack discovery: every way a user's insightface folder can be wrong gets a message that
names the exact folder and the expected layout, and insightface never reaches its downloader."""

import os
import shutil
import socket
import sys

import pytest

from instantfamily_core.faces import find_model_pack, list_model_packs, load_face_analyzer


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or to fetch a file through insightface fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network/download attempt was made")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import insightface.utils.storage  # noqa: F401  (imports insightface.utils.download)

    # (a package attribute named 'download' shadows the module, hence sys.modules)
    for module in ("insightface.utils.download", "insightface.utils.storage"):
        monkeypatch.setattr(sys.modules[module], "download_file", refuse)


def test_missing_pack_names_folder_and_layout(tmp_path, no_network):
    root = tmp_path / "insightface"
    (root / "models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        load_face_analyzer(str(root), "antelopev2", provider="CPU")
    message = str(error.value)
    assert os.path.join(str(root), "models", "antelopev2") in message
    assert os.path.join(str(root), "models", "antelopev2", "glintr100.onnx") in message
    assert "scrfd_10g_bnkps.onnx" in message and "nothing is downloaded" in message


def test_missing_pack_lists_every_root_looked_in(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(FileNotFoundError) as error:
        find_model_pack(roots, "buffalo_l")
    for root in roots:
        assert os.path.join(root, "models", "buffalo_l") in str(error.value)
    assert "w600k_r50.onnx" in str(error.value) and "det_10g.onnx" in str(error.value)


def test_empty_pack_folder(tmp_path, no_network):
    folder = tmp_path / "models" / "antelopev2"
    folder.mkdir(parents=True)
    (folder / "antelopev2.zip").write_bytes(b"PK")
    with pytest.raises(ValueError) as error:
        load_face_analyzer(str(tmp_path), "antelopev2", provider="CPU")
    message = str(error.value)
    assert f"{folder} holds no .onnx files" in message
    assert "antelopev2.zip" in message and "extract" in message
    assert "AssertionError" not in message


def test_nested_pack_folder_is_explained(tmp_path, tiny_pack, no_network):
    _, _, source = tiny_pack
    folder = tmp_path / "models" / "antelopev2"
    shutil.copytree(source, folder / "antelopev2")  # what unzipping into the pack folder gives
    with pytest.raises(ValueError) as error:
        load_face_analyzer(str(tmp_path), "antelopev2", provider="CPU")
    message = str(error.value)
    assert "nested folder" in message and str(folder / "antelopev2") in message
    assert f"Move the .onnx files up into {folder}" in message


def test_pack_without_models_level_is_explained(tmp_path, tiny_pack):
    _, _, source = tiny_pack
    shutil.copytree(source, tmp_path / "buffalo_l")  # models/insightface/buffalo_l instead of .../models/buffalo_l
    with pytest.raises(FileNotFoundError) as error:
        find_model_pack(str(tmp_path), "buffalo_l")
    assert f"Found .onnx files in {tmp_path / 'buffalo_l'}" in str(error.value)
    assert str(tmp_path / "models" / "buffalo_l") in str(error.value)


def test_pack_without_detector_replaces_insightface_assertion(tmp_path, tiny_pack, no_network):
    _, _, source = tiny_pack
    folder = tmp_path / "models" / "recognizer_only"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(source, "rec_tiny.onnx"), folder)
    with pytest.raises(ValueError) as error:
        load_face_analyzer(str(tmp_path), "recognizer_only", provider="CPU")
    message = str(error.value)
    assert f"no face detector among the .onnx files of {folder}" in message
    assert "SCRFD" in message and "expected layout" in message


def test_pack_without_recognizer(tmp_path, tiny_pack, no_network):
    _, _, source = tiny_pack
    folder = tmp_path / "models" / "detector_only"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(source, "det_toy.onnx"), folder)
    with pytest.raises(ValueError, match=r"no face recognizer among the \.onnx files of .*detector_only"):
        load_face_analyzer(str(tmp_path), "detector_only", provider="CPU")


def test_bad_pack_names_and_settings(tmp_path, tiny_pack):
    with pytest.raises(ValueError, match="not a folder name"):
        find_model_pack(str(tmp_path), "../etc")
    root, pack, _ = tiny_pack
    with pytest.raises(ValueError, match="multiple of 32"):
        load_face_analyzer(root, pack, det_size=500)
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_face_analyzer(root, pack, det_thresh=1.5)


def test_list_model_packs_includes_found_and_defaults(tiny_pack):
    root, pack, _ = tiny_pack
    packs = list_model_packs([root, "/nonexistent"])
    assert pack in packs and "antelopev2" in packs and "buffalo_l" in packs


def test_tiny_pack_loads_without_network(tiny_pack, no_network):
    root, pack, folder = tiny_pack
    analyzer = load_face_analyzer(root, pack, provider="CPU")
    assert analyzer.info.pack == pack and analyzer.info.file_name == "rec_tiny.onnx"
    assert os.path.dirname(analyzer.detector.model_file) == folder


def test_no_network_guard_catches_insightface_downloads(tmp_path, no_network):
    """The guard used above is real: insightface itself, asked for a missing pack, is stopped by it."""
    from insightface.app import FaceAnalysis

    with pytest.raises(AssertionError, match="network/download attempt"):
        FaceAnalysis(name="antelopev2", root=str(tmp_path), providers=["CPUExecutionProvider"])


def test_damaged_onnx_file_is_named(tmp_path, tiny_pack, no_network):
    _, _, source = tiny_pack
    folder = tmp_path / "models" / "damaged"
    shutil.copytree(source, folder)
    with open(folder / "det_toy.onnx", "r+b") as stream:
        stream.truncate(200)  # an interrupted download
    with pytest.raises(RuntimeError) as error:
        load_face_analyzer(str(tmp_path), "damaged", provider="CPU")
    assert f"could not open the .onnx files of {folder}" in str(error.value) and "download that pack again" in str(
        error.value
    )
