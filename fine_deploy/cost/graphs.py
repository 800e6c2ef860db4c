"""Tiny ONNX graphs of layers in each kernel form, built with onnx.helper (no torch export: fast).

A graph is a chain of layers, each one's input the previous one's output; one layer is the
chain of one. Layers of one group in the shared-basis form use one pair of basis initialisers,
so the file (and the runtime) hold that basis once, as an exported shared-basis model does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fine_deploy.cost.shapes import LayerShape, check_form
from fine_deploy.errors import FineDeployError

OPSET = 17


@dataclass(frozen=True)
class LayerChoice:
    """A layer and how it runs: kernel form and rank (rank is None for dense)."""

    shape: LayerShape
    form: str = "dense"
    rank: int | None = None

    def __post_init__(self) -> None:
        check_form(self.form, self.rank, self.shape)

    def key(self) -> str:
        return f"{self.shape.key()}|{self.form}|r{self.rank or 0}"


def _input_dims(shape: LayerShape) -> list[int]:
    if shape.kind == "linear":
        return [shape.tokens, shape.m2]
    h, w = shape.out_hw
    return [1, shape.in_channels, h * shape.stride, w * shape.stride]


def _output_dims(shape: LayerShape) -> list[int]:
    if shape.kind == "linear":
        return [shape.tokens, shape.m1]
    h, w = shape.out_hw
    return [1, shape.m1, h, w]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.count = 0

    def weight(self, name: str, dims: list[int], fan_in: int) -> str:
        if name not in self.inits:
            w = (self.rng.standard_normal(dims) / np.sqrt(fan_in)).astype(np.float32)
            self.inits[name] = numpy_helper.from_array(w, name)
        return name

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def apply(self, x: str, shape: LayerShape, w: str, out: str, k: int, stride: int) -> None:
        if shape.kind == "linear":
            self.nodes.append(helper.make_node("MatMul", [x, w], [out]))
        else:
            pad = k // 2
            self.nodes.append(
                helper.make_node("Conv", [x, w], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
            )

    def layer(self, x: str, choice: LayerChoice, out: str) -> None:
        s, r, i = choice.shape, choice.rank, self.count
        conv = s.kind == "conv"
        cin = s.in_channels
        if choice.form == "dense":
            dims = [s.m1, cin, s.k, s.k] if conv else [s.m2, s.m1]
            w = self.weight(f"W{i}", dims, s.m2)
            self.apply(x, s, w, out, s.k, s.stride)
            return
        assert r is not None
        shared = choice.form == "shared_basis"
        # shared bases are named by group, shape and rank, so every layer of the group reuses them
        # (a group's width options have other shapes, hence other bases)
        stem = f"{s.group}:{s.key()}.r{r}" if shared else f"L{i}"
        v = self.weight(f"{stem}.V", [r, cin, s.k, s.k] if conv else [s.m2, r], s.m2)
        u = self.weight(f"{stem}.U", [s.m1, r, 1, 1] if conv else [r, s.m1], r)
        h = self.fresh("h")
        self.apply(x, s, v, h, s.k, s.stride)
        if shared:
            sig = self.weight(f"sigma{i}", [1, r, 1, 1] if conv else [r], 1)
            hs = self.fresh("hs")
            self.nodes.append(helper.make_node("Mul", [h, sig], [hs]))
            h = hs
        self.apply(h, s, u, out, 1, 1)


def build_chain(layers: list[LayerChoice], *, seed: int = 0, name: str = "chain") -> onnx.ModelProto:
    """One ONNX model running `layers` in order; adjacent layers must have matching activations."""
    if not layers:
        raise FineDeployError("cannot build a graph of zero layers; give at least one layer")
    for a, b in zip(layers, layers[1:], strict=False):
        if _output_dims(a.shape) != _input_dims(b.shape):
            raise FineDeployError(
                f"layer {b.shape.key()} cannot follow {a.shape.key()}: activation shapes "
                f"{_output_dims(a.shape)} and {_input_dims(b.shape)} differ"
            )
    bld = _Builder(seed)
    x = "x"
    for j, choice in enumerate(layers):
        out = "y" if j == len(layers) - 1 else bld.fresh("a")
        bld.count += 1
        bld.layer(x, choice, out)
        x = out
    graph = helper.make_graph(
        bld.nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, _input_dims(layers[0].shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, _output_dims(layers[-1].shape))],
        initializer=list(bld.inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fine-deploy")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_identity(shape: LayerShape) -> onnx.ModelProto:
    """The empty graph of a layer's input: what one run costs with no work (the fixed overhead)."""
    dims = _input_dims(shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fine-deploy")
    model.ir_version = 8
    return model


def square_layer(dims: list[int]) -> LayerShape:
    """A cheap dense layer mapping an activation of `dims` to itself (a 1x1 conv or a square matmul)."""
    if len(dims) == 2:
        return LayerShape("linear", dims[1], dims[1], dims[0], group="boundary")
    return LayerShape("conv", dims[1], dims[1], dims[2] * dims[3], out_w=dims[3], group="boundary")


def dims_key(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims)


def input_dims(shape: LayerShape) -> list[int]:
    return _input_dims(shape)


def output_dims(shape: LayerShape) -> list[int]:
    return _output_dims(shape)
