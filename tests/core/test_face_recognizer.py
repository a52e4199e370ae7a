"""One-pass recognizer: the global output equals insightface's own ArcFaceONNX.get_feat, and the
extra output is the exact pre-flatten map of the network."""

import hashlib
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from instantfamily_core.faces import OnePassRecognizer, align_crop, find_feature_map
from instantfamily_dev.face_fixtures import TinyRecognizer, _export, _randomise_batchnorm, astronaut, disc_image


@pytest.fixture(scope="module")
def crops(tiny_analyzer, dlib_backend):
    """Aligned crops: three synthetic 'faces' and the astronaut's face (dlib keypoints)."""
    faces = tiny_analyzer.analyze(disc_image(centres=((96, 96), (320, 320), (544, 544))))
    assert len(faces) == 3
    photo = astronaut()
    _, keypoints = dlib_backend.detect(photo[:, :, ::-1].copy(), input_size=(512, 512))
    return np.stack([f.crop for f in faces] + [align_crop(photo, keypoints[0])])  # (4, 112, 112, 3)


def test_global_equals_insightface_get_feat(tiny_pack, tiny_analyzer, crops):
    from insightface.model_zoo import model_zoo

    _, _, folder = tiny_pack
    reference = model_zoo.get_model(os.path.join(folder, "rec_tiny.onnx"), providers=["CPUExecutionProvider"])
    assert type(reference).__name__ == "ArcFaceONNX"
    # insightface works on BGR crops and swaps to RGB itself; our crops are RGB.
    expected = reference.get_feat([np.ascontiguousarray(c[:, :, ::-1]) for c in crops])
    global_feature, local_feature = tiny_analyzer.recognizer.features(crops)
    assert global_feature.shape == (4, 512) and global_feature.dtype == np.float32
    np.testing.assert_allclose(global_feature, expected, rtol=1e-5, atol=1e-5)
    assert local_feature.shape == (4, 512, 7, 7) and local_feature.dtype == np.float32
    # one crop at a time gives the same as the batch
    single_global, single_local = tiny_analyzer.recognizer.features(crops[3:4])
    np.testing.assert_allclose(single_global, global_feature[3:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single_local, local_feature[3:4], rtol=1e-5, atol=1e-5)
    empty_global, empty_local = tiny_analyzer.recognizer.features(crops[:0])
    assert empty_global.shape == (0, 512) and empty_local.shape == (0, 512, 7, 7)
    with pytest.raises(ValueError, match=r"must be \(N, 112, 112, 3\) crops"):
        tiny_analyzer.recognizer.features(crops[:, :64])


def test_local_is_the_map_before_flatten(tiny_analyzer, crops):
    """The extra output is the network's bn2 output (after the last BN, before flatten), not any other."""
    torch.manual_seed(0)  # the fixture's seed: the same weights as the exported file
    model = TinyRecognizer()
    _randomise_batchnorm(model, torch.Generator().manual_seed(0))
    model.eval()
    seen = {}
    model.bn2.register_forward_hook(lambda module, args, out: seen.setdefault("map", out))
    x = torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)  # (N, 3, 112, 112)
    with torch.no_grad():
        expected_global = model(x).numpy()
    global_feature, local_feature = tiny_analyzer.recognizer.features(crops)
    np.testing.assert_allclose(local_feature, seen["map"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(global_feature, expected_global, rtol=1e-4, atol=1e-4)


def test_recognizer_info_records_file_shapes_and_sha256(tiny_pack, tiny_analyzer):
    _, pack, folder = tiny_pack
    info = tiny_analyzer.info
    with open(os.path.join(folder, "rec_tiny.onnx"), "rb") as stream:
        assert info.sha256 == hashlib.sha256(stream.read()).hexdigest()
    assert (info.pack, info.file_name, info.global_shape, info.local_shape) == (
        pack,
        "rec_tiny.onnx",
        (512,),
        (512, 7, 7),
    )


class _ReshapeHead(nn.Module):
    """MXNet-converter-like ending: map -> Dropout -> Reshape -> MatMul + Add (no final BN)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 16, 16)  # (B, 16, 7, 7)
        self.bn = nn.BatchNorm2d(16)
        self.weight = nn.Parameter(torch.randn(16 * 49, 32) * 0.05)
        self.bias = nn.Parameter(torch.randn(32))

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))  # (B, 16, 7, 7); BN after ReLU stays a BN node
        return torch.matmul(x.reshape(x.shape[0], -1), self.weight) + self.bias


class _NoFlatten(nn.Module):
    def forward(self, x):
        return torch.matmul(x.mean((2, 3)), torch.ones(3, 8))


def test_feature_map_walk_handles_reshape_and_matmul(tmp_path):
    path = str(tmp_path / "r.onnx")
    head = _ReshapeHead().eval()
    _export(head, (torch.zeros(1, 3, 112, 112),), path, input_names=["data"], output_names=["fc1"])
    model = onnx.load(path)
    output, map_name = find_feature_map(model)
    producer = {o: n for n in model.graph.node for o in n.output}[map_name]
    assert output == "fc1" and producer.op_type == "BatchNormalization"
    recognizer = OnePassRecognizer(path, providers=["CPUExecutionProvider"])
    assert recognizer.info.global_shape == (32,) and recognizer.info.local_shape == (16, 7, 7)
    assert (recognizer.mean, recognizer.std) == (127.5, 127.5)
    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    x = torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected_map = head.bn(torch.relu(head.conv(x))).numpy()
        expected = head(x).numpy()
    global_feature, local_feature = recognizer.features(crops)
    np.testing.assert_allclose(local_feature, expected_map, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(global_feature, expected, rtol=1e-4, atol=1e-4)


def test_graph_without_flatten_is_refused(tmp_path):
    path = str(tmp_path / "n.onnx")
    _export(_NoFlatten(), (torch.zeros(1, 3, 112, 112),), path, input_names=["data"], output_names=["out"])
    with pytest.raises(ValueError, match="not fed by a Flatten/Reshape"):
        find_feature_map(onnx.load(path))
