"""Global and local identity features from ONE pass of an ArcFace-style recognizer.

The recognizer's ONNX graph is edited in memory: the last feature map before its flatten/FC
(e.g. 512x7x7 for glintr100 / w600k_r50) becomes a second graph output, and a single
onnxruntime session returns both the embedding (global feature) and that map (local feature).
insightface's own ArcFaceONNX insists on exactly one output, hence this separate session.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..config import RecognizerInfo
from .model_pack import file_sha256

logger = logging.getLogger(__name__)

FC_OPS = ("Gemm", "MatMul")
# Between the graph output and the final FC (embedding BN, bias add, scaling, ...).
_AFTER_FC_OPS = {
    "BatchNormalization",
    "Identity",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Dropout",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Cast",
}
# Between the FC input and the flatten (a BatchNorm1d after flatten, dropout).
_BEFORE_FLATTEN_OPS = {"Dropout", "Identity", "BatchNormalization"}
_FLATTEN_OPS = {"Flatten", "Reshape"}
_NO_OP = {"Dropout", "Identity"}


def _constants(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def find_feature_map(model) -> tuple[str, str]:
    """(embedding output name, pre-flatten map tensor name) of a recognizer ModelProto.

    Walks back from the graph's first output to the last Gemm/MatMul, then from that layer's
    data input back through Dropout/BatchNormalization/Flatten/Reshape to the tensor that
    enters the flatten. Raises ValueError when the graph does not have that structure.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = _constants(graph)

    def data_input(node):
        inputs = [i for i in node.input if i and i not in constants]
        return inputs[0] if inputs else None

    output = graph.output[0].name
    tensor, fc = output, None
    for _ in range(32):
        node = producers.get(tensor)
        if node is None:
            break
        if node.op_type in FC_OPS:
            fc = node
            break
        if node.op_type not in _AFTER_FC_OPS:
            break
        tensor = data_input(node)
    if fc is None:
        raise ValueError(
            f"recognizer graph: no Gemm/MatMul found walking back from output {output!r}; "
            "expected an ArcFace-style network ending in flatten -> fully connected -> (batch norm)"
        )
    tensor, flattened = data_input(fc), False
    for _ in range(32):
        node = producers.get(tensor)
        if node is None:
            break
        if not flattened and node.op_type in _FLATTEN_OPS:
            tensor, flattened = node.input[0], True
        elif not flattened and node.op_type in _BEFORE_FLATTEN_OPS:
            tensor = data_input(node)
        elif flattened and node.op_type in _NO_OP:
            tensor = data_input(node)
        else:
            break
    if not flattened:
        raise ValueError(
            f"recognizer graph: the final {fc.op_type} ({fc.name or 'unnamed'}) is not fed by a Flatten/Reshape, "
            "so there is no pre-flatten feature map to use as the local feature"
        )
    return output, tensor


def add_feature_map_output(model) -> tuple[str, str]:
    """Make ``model`` (edited in place) also output its pre-flatten map: (global name, map name)."""
    import onnx

    global_name, map_name = find_feature_map(model)
    if map_name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(map_name, onnx.TensorProto.FLOAT, None))
    return global_name, map_name


def preprocessing_of(model) -> tuple[float, float]:
    """(mean, std) the recognizer expects on 0-255 RGB input.

    Follows insightface's rule: graphs converted from MXNet subtract and scale the input
    themselves (their first nodes are named Sub.../_minus... and Mul.../_mul...), so they get
    raw pixels; all others get (x - 127.5) / 127.5.
    """
    names = [node.name for node in model.graph.node[:8]]
    subtracts = any(n.startswith(("Sub", "_minus")) for n in names)
    scales = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if subtracts and scales else (127.5, 127.5)


class OnePassRecognizer:
    """One onnxruntime session returning (global embedding, pre-flatten feature map) per crop."""

    def __init__(self, model_file: str, providers=None, sess_options=None, pack: str = ""):
        import onnx
        import onnxruntime

        self.model_file = os.path.abspath(model_file)
        model = onnx.load(self.model_file)
        self.mean, self.std = preprocessing_of(model)
        graph_input = model.graph.input[0]
        dims = graph_input.type.tensor_type.shape.dim
        self.input_name = graph_input.name
        self.input_size = int(dims[2].dim_value) or 112
        self.fixed_batch = int(dims[0].dim_value) if dims[0].dim_value > 0 else 0
        self.global_name, self.map_name = add_feature_map_output(model)  # in place: one copy of the weights
        serialized = model.SerializeToString()
        del model
        kwargs = {"providers": providers} if providers else {}
        if sess_options is not None:
            kwargs["sess_options"] = sess_options
        self.session = onnxruntime.InferenceSession(serialized, **kwargs)
        del serialized
        zeros = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
        global_feature, local_feature = self.features(zeros)
        if local_feature.ndim != 4 or local_feature.shape[2] != local_feature.shape[3]:
            raise ValueError(
                f"recognizer {self.model_file}: the tensor before its flatten ({self.map_name!r}) has shape "
                f"{tuple(local_feature.shape[1:])}, expected a square map (C, L, L)"
            )
        self.info = RecognizerInfo(
            pack=pack,
            file_name=os.path.basename(self.model_file),
            sha256=file_sha256(self.model_file),
            global_shape=tuple(int(v) for v in global_feature.shape[1:]),
            local_shape=tuple(int(v) for v in local_feature.shape[1:]),
        )
        logger.debug(
            "one-pass recognizer %s: global %s, local %s",
            self.info.file_name,
            self.info.global_shape,
            self.info.local_shape,
        )

    def blob(self, crops_rgb: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, 3, S, S) float32 network input."""
        x = (crops_rgb.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, S, S)

    def features(self, crops_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 RGB aligned crops -> global (N, D) and local (N, C, L, L), float32."""
        crops_rgb = np.asarray(crops_rgb)
        if crops_rgb.ndim != 4 or crops_rgb.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"recognizer input must be (N, {self.input_size}, {self.input_size}, 3) crops, got {crops_rgb.shape}"
            )
        if len(crops_rgb) == 0 and hasattr(self, "info"):
            return np.zeros((0, *self.info.global_shape), np.float32), np.zeros((0, *self.info.local_shape), np.float32)
        blob = self.blob(crops_rgb)
        step = self.fixed_batch or len(blob)
        outs = [
            self.session.run([self.global_name, self.map_name], {self.input_name: blob[i : i + step]})
            for i in range(0, len(blob), max(step, 1))
        ]
        global_feature = np.concatenate([o[0] for o in outs]).astype(np.float32).reshape(len(blob), -1)  # (N, D)
        local_feature = np.concatenate([o[1] for o in outs]).astype(np.float32)  # (N, C, L, L)
        return global_feature, local_feature
