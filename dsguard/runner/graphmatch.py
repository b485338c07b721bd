"""Reading an ONNX graph for pattern matching: who produces and who uses each value, constants, pruning."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

MS_DOMAIN = "com.microsoft"


class GraphIndex:
    """Producers and consumers of every value of a graph, as it was when indexed."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.outputs = {value.name for value in graph.output}

    def source(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_use(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        if init is not None and init.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(init)
        node = self.source(name, "Constant")
        if node is not None:
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def other_input(node: onnx.NodeProto, name: str) -> str:
    """The input of a two-input node that is not ``name``."""
    return str(node.input[1] if node.input[0] == name else node.input[0])


def prune(graph: onnx.GraphProto) -> None:
    """Drops nodes, initializers and inputs that no graph output depends on."""
    needed = {value.name for value in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    keep_initializers(graph, needed)
    inputs = [value for value in graph.input if value.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)


def keep_initializers(graph: onnx.GraphProto, needed: Iterable[str]) -> None:
    """Keeps only the initializers named in ``needed``."""
    used = set(needed)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
