"""Checkpoint round trip and every way a file can be wrong, each with a message naming the file."""

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from instantfamily_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from instantfamily_core.config import InstantFamilyConfig, RecognizerInfo
from instantfamily_core.identity import Faces, Identity
from instantfamily_core.projector import Projector
from instantfamily_core.stack import build_stack, check_recognizer

SMALL = dict(d_gf=16, d_lf=8, L=3, d_K=12, projector_hidden=20)


def small_config(**overrides):
    return InstantFamilyConfig(**{**SMALL, **overrides})


def write_checkpoint(path, config=None):
    config = config or small_config()
    torch.manual_seed(0)
    projector = Projector(config)
    controlnet = {"input_hint_block.0.weight": torch.randn(4, 3, 3, 3)}
    deltas = {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(4, 12)}
    save_checkpoint(path, config, projector.state_dict(), controlnet, deltas)
    return projector


def test_round_trip_restores_config_projector_and_extras(tmp_path):
    path = tmp_path / "family.safetensors"
    config = small_config(
        mask_mode="paper",
        recognizer=RecognizerInfo(
            pack="antelopev2", file_name="glintr100.onnx", sha256="ab" * 32, global_shape=(16,), local_shape=(8, 3, 3)
        ),
    )
    projector = write_checkpoint(path, config)
    loaded = load_checkpoint(path)
    assert loaded.config == config
    for name, tensor in projector.state_dict().items():
        assert torch.equal(loaded.projector.state_dict()[name], tensor)
    assert set(loaded.controlnet_state) == {"input_hint_block.0.weight"}
    assert list(loaded.unet_deltas)[0].startswith("diffusion_model.")
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temp file


def test_missing_file_names_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match="models/instantfamily"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    zipped = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, zipped)  # torch's zip container
    raw = tmp_path / "model.pt"
    raw.write_bytes(pickle.dumps({"a": 1}))
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match=f"{path.name}.*pickle"):
            load_checkpoint(path)


def test_corrupt_file_is_reported(tmp_path):
    path = tmp_path / "family.safetensors"
    write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # data cut short
    with pytest.raises(CheckpointError, match="family.safetensors.*damaged or incomplete.*download or export it again"):
        load_checkpoint(path)
    header_length = int.from_bytes(data[:8], "little")
    path.write_bytes(data[: 8 + header_length // 2])  # a truncated header
    with pytest.raises(CheckpointError, match="damaged or incomplete.*download or export it again"):
        load_checkpoint(path)
    header = data[8 : 8 + header_length].replace(b'"data_offsets":[0,', b'"data_offsets":[0,9', 1)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + header_length :])  # sizes that lie
    with pytest.raises(CheckpointError, match="damaged or incomplete.*download or export it again"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_checkpoint(path)


def test_missing_metadata_is_reported(tmp_path):
    path = tmp_path / "controlnet.safetensors"
    save_file({"projector.x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="controlnet.safetensors.*not an InstantFamily checkpoint"):
        load_checkpoint(path)


def test_wrong_shapes_name_the_tensor_and_config(tmp_path):
    path = tmp_path / "family.safetensors"
    config = small_config()
    state = Projector(small_config(d_K=24)).state_dict()
    save_checkpoint(path, config, state)
    with pytest.raises(CheckpointError, match=r"family.safetensors: projector\.\S+ has shape .*d_K=12"):
        load_checkpoint(path)


def test_bad_config_json_is_reported(tmp_path):
    path = tmp_path / "family.safetensors"
    save_file({"projector.x": torch.zeros(1)}, path, metadata={"instantfamily": json.dumps({"mask_mode": "soft"})})
    with pytest.raises(CheckpointError, match="family.safetensors: invalid InstantFamily config.*mask_mode"):
        load_checkpoint(path)


def test_stack_preserves_order_for_any_number_of_faces(tmp_path):
    config = small_config()
    projector = Projector(config).eval()
    rng = np.random.default_rng(0)
    identities = [
        Identity(rng.normal(size=16).astype(np.float32), rng.normal(size=(8, 3, 3)).astype(np.float32), f"p{i}")
        for i in range(17)
    ]
    for n in (0, 1, 4, 17):
        stack = build_stack(projector, Faces(identities[:n]))
        assert stack.face_tokens.shape == (n, config.tokens_per_face, config.d_K)
        assert stack.labels == tuple(f"p{i}" for i in range(n))
    full = build_stack(projector, Faces(identities[:4]))
    swapped = build_stack(projector, Faces([identities[1], identities[0]]))
    assert torch.allclose(swapped.face_tokens[0], full.face_tokens[1], atol=1e-6)
    flat = full.flat_tokens()  # (N*T, d_K): slot n at rows n*T .. (n+1)*T, as the attention lays keys out
    assert flat.shape == (4 * config.tokens_per_face, config.d_K)
    assert torch.equal(flat[config.tokens_per_face : 2 * config.tokens_per_face], full.face_tokens[1])


def test_recognizer_mismatch_is_refused():
    trained = RecognizerInfo(pack="antelopev2", file_name="glintr100.onnx", sha256="a" * 64)
    other = RecognizerInfo(pack="buffalo_l", file_name="w600k_r50.onnx", sha256="b" * 64)
    check_recognizer(trained, RecognizerInfo(pack="antelopev2", file_name="glintr100.onnx", sha256="a" * 64))
    with pytest.raises(ValueError, match="w600k_r50.onnx.*glintr100.onnx.*antelopev2"):
        check_recognizer(trained, other)


def test_config_json_round_trip_and_unknown_keys():
    config = small_config(palette=((1, 2, 3), (4, 5, 6)))
    assert InstantFamilyConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown keys"):
        InstantFamilyConfig.from_dict({"d_K": 3, "lora_rank": 4})
