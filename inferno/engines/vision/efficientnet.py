"""EfficientNet-Lite0 as an ONNX graph, built from the PyTorch state dict.

BatchNorm is folded into the convolutions before the graph is written, and every
convolution pads the TensorFlow way (``SAME``: the extra row or column goes at the
bottom and right), which is what the weights were trained with; symmetric padding
shifts every feature map by one pixel and changes the predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

INPUT_SIZE = 224
BN_EPS = 1e-3
#: stride of each MBConv block (EfficientNet-B0's stage layout); kernel sizes are in the weights
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
#: the graph's version: bump it when the graph changes, so cached files are rebuilt
GRAPH_VERSION = 1

Array = npt.NDArray[np.float32]


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding along one axis: (before, after), after >= before."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fold_bn(weight: Array, state: dict[str, Any], prefix: str) -> tuple[Array, Array]:
    """Fold ``prefix``'s BatchNorm into the preceding convolution's weight and bias."""
    gamma, beta = state[prefix + ".weight"], state[prefix + ".bias"]
    mean, var = state[prefix + ".running_mean"], state[prefix + ".running_var"]
    scale = gamma / np.sqrt(var + BN_EPS)
    folded = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return folded.astype(np.float32), (beta - mean * scale).astype(np.float32)


@dataclass(frozen=True, slots=True)
class ConvSpec:
    """One convolution with its folded BatchNorm, as the graph needs it."""

    name: str
    weight: Array
    bias: Array
    stride: int
    groups: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    relu6: bool


def layers(state: dict[str, Any]) -> tuple[list[ConvSpec | tuple[str, int]], Array, Array]:
    """The network as a flat list: convolutions, and ``("skip", start)`` markers that
    add the activation saved at index ``start``; plus the classifier's weight and bias."""
    out: list[ConvSpec | tuple[str, int]] = []
    size = INPUT_SIZE

    def conv(name: str, key: str, bn: str, stride: int, groups: int, relu6: bool) -> None:
        nonlocal size
        weight = state[key]
        kernel = weight.shape[-1]
        top, bottom = same_pads(size, kernel, stride)
        w, b = fold_bn(weight, state, bn)
        out.append(ConvSpec(name, w, b, stride, groups, (top, top, bottom, bottom), relu6))
        size = math.ceil(size / stride)

    conv("stem", "_conv_stem.weight", "_bn0", 2, 1, True)
    for i, stride in enumerate(BLOCK_STRIDES):
        p = f"_blocks.{i}."
        start = len(out)
        in_ch = state[p + "_depthwise_conv.weight"].shape[0]
        if p + "_expand_conv.weight" in state:
            in_ch = state[p + "_expand_conv.weight"].shape[1]
            conv(f"b{i}_expand", p + "_expand_conv.weight", p + "_bn0", 1, 1, True)
        channels = state[p + "_depthwise_conv.weight"].shape[0]
        conv(f"b{i}_dw", p + "_depthwise_conv.weight", p + "_bn1", stride, channels, True)
        conv(f"b{i}_project", p + "_project_conv.weight", p + "_bn2", 1, 1, False)
        if stride == 1 and in_ch == state[p + "_project_conv.weight"].shape[0]:
            out.append(("skip", start))
    conv("head", "_conv_head.weight", "_bn1", 1, 1, True)
    return out, state["_fc.weight"].astype(np.float32), state["_fc.bias"].astype(np.float32)


def build_onnx(state: dict[str, Any]) -> bytes:
    """The serialized ONNX model: input ``image`` (N,3,224,224), output ``probs`` (N,1000)."""
    from onnx import TensorProto, helper, numpy_helper

    specs, fc_w, fc_b = layers(state)
    nodes: list[Any] = []
    inits: list[Any] = []
    names: list[str] = []  # the output name of each entry of ``specs``
    current = "image"
    for index, spec in enumerate(specs):
        if isinstance(spec, tuple):
            start = spec[1]
            block_input = "image" if start == 0 else names[start - 1]
            out = f"skip{index}"
            nodes.append(helper.make_node("Add", [current, block_input], [out]))
        else:
            inits += [
                numpy_helper.from_array(spec.weight, spec.name + "_w"),
                numpy_helper.from_array(spec.bias, spec.name + "_b"),
            ]
            out = spec.name + ("_conv" if spec.relu6 else "")
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, spec.name + "_w", spec.name + "_b"],
                    [out],
                    kernel_shape=list(spec.weight.shape[-2:]),
                    strides=[spec.stride, spec.stride],
                    pads=list(spec.pads),
                    group=spec.groups,
                )
            )
            if spec.relu6:
                nodes.append(helper.make_node("Clip", [out, "zero", "six"], [spec.name]))
                out = spec.name
        names.append(out)
        current = out
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferno")
    model.ir_version = 8
    return bytes(model.SerializeToString())
