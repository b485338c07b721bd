"""The key/value cache of a decode batch, kept as OrtValues on the session's device, and its rebatching.

Rows are either left-padded to a common length (graphs that take an attention mask) or keep their own
lengths in buffers with free space on the right (graphs that take per-row lengths). Joining a sequence
to a batch and dropping finished rows run as two small ONNX graphs on the same device as the model, so
the cache never goes through the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime.capi import _pybind_state as C  # the binding layer: no per-call Python wrappers

OrtValue = Any
"""``onnxruntime.capi._pybind_state.OrtValue``, the native value the binding layer passes around."""


def device_of(name: str) -> Any:
    """The native OrtDevice for ``"cpu"`` or ``"cuda"`` (device 0)."""
    return ort.OrtDevice.make(name, 0)._get_c_device()


@dataclasses.dataclass
class KVCache:
    """Past keys and values of a batch (key then value for each layer), ``[rows, kv_heads, capacity, head_dim]``.

    Positions ``length`` and beyond are free space: a graph that writes the cache in place (fused attention)
    appends there; a graph that concatenates gets buffers exactly ``length`` long.
    """

    values: list[OrtValue]
    rows: int
    length: int
    """Positions held by the longest row (left-padded rows: by every row)."""
    capacity: int = -1

    def __post_init__(self) -> None:
        if self.capacity < 0:
            self.capacity = self.length


class KVOps:
    """Merging, compacting and growing caches on their device: one small graph over every tensor at once."""

    def __init__(self, count: int, dtype: np.dtype[Any], providers: Sequence[str], device: str) -> None:
        self.count = count
        self.device = device_of(device)
        self._cpu = device_of("cpu")
        elem = helper.np_dtype_to_tensor_dtype(dtype)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._merge = ort.InferenceSession(_merge_graph(count, elem).SerializeToString(), options,
                                           providers=list(providers))._sess
        self._select = ort.InferenceSession(_select_graph(count, elem).SerializeToString(), options,
                                            providers=list(providers))._sess

    def merge(self, first: KVCache, second: KVCache, capacity: int | None = None, *, ragged: bool = False) -> KVCache:
        """Rows of ``first`` then rows of ``second``, the shorter left-padded with zeros to the longer's length
        (``ragged``: each row kept where it starts, free space after it)."""
        if first.rows == 0:
            return second
        length = max(first.length, second.length)
        capacity = length if capacity is None else capacity
        controls = {}
        for side, cache in (("a", first), ("b", second)):
            left = 0 if ragged else length - cache.length
            controls[f"len_{side}"] = np.array([cache.length], dtype=np.int64)
            controls[f"pad_{side}"] = _pads(left, capacity - left - cache.length)
        io = C.SessionIOBinding(self._merge)
        for name, array in controls.items():
            io.bind_ortvalue_input(name, C.OrtValue.ortvalue_from_numpy(array, self._cpu))
        for i in range(self.count):
            io.bind_ortvalue_input(f"a{i}", first.values[i])
            io.bind_ortvalue_input(f"b{i}", second.values[i])
            io.bind_output(f"out{i}", self.device)
        self._merge.run_with_iobinding(io, None)
        outputs = io.get_outputs()
        return KVCache([outputs[i] for i in range(self.count)], first.rows + second.rows, length, capacity)

    def select(self, cache: KVCache, rows: npt.NDArray[np.int64], drop: int, capacity: int | None = None) -> KVCache:
        """Only the given rows, without the first ``drop`` positions (padding every kept row has), in ``capacity``."""
        length = cache.length - drop
        capacity = length if capacity is None else capacity
        if drop == 0 and capacity == cache.capacity and rows.size == cache.rows and bool(
                (rows == np.arange(cache.rows)).all()):
            return cache
        controls = {"rows": np.ascontiguousarray(rows, dtype=np.int64), "start": np.array([drop], dtype=np.int64),
                    "end": np.array([cache.length], dtype=np.int64), "pads": _pads(0, capacity - length)}
        io = C.SessionIOBinding(self._select)
        for name, array in controls.items():
            io.bind_ortvalue_input(name, C.OrtValue.ortvalue_from_numpy(array, self._cpu))
        for i in range(self.count):
            io.bind_ortvalue_input(f"x{i}", cache.values[i])
            io.bind_output(f"out{i}", self.device)
        self._select.run_with_iobinding(io, None)
        outputs = io.get_outputs()
        return KVCache([outputs[i] for i in range(self.count)], int(rows.size), length, capacity)


class PaddingMask:
    """Attention mask (or additive bias) rows of a left-padded batch, kept while its padding stays the same.

    Decode steps only add visible positions on the right, so each step copies a prefix of the same rows.
    """

    def __init__(self, dtype: np.dtype[Any], hidden: float, visible: float, groups: int = 0) -> None:
        self.dtype, self.hidden, self.visible, self.groups = dtype, hidden, visible, groups
        self.pads: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.table: npt.NDArray[Any] = np.zeros((0, 0), dtype=dtype)

    def rows(self, pads: npt.NDArray[np.int64], total: int) -> npt.NDArray[Any]:
        """``[rows, total]`` (or ``[rows, 1, groups, total]`` for a bias), hiding the first ``pads[row]`` positions."""
        table = self.table
        if table.shape[1] < total or not np.array_equal(pads, self.pads):
            width = max(2 * total, 256)
            table = np.where(np.arange(width)[None, :] < pads[:, None], self.hidden, self.visible).astype(self.dtype)
            self.table, self.pads = table, pads.copy()
        if not self.groups:
            return np.ascontiguousarray(table[:, :total])
        out = np.empty((table.shape[0], 1, self.groups, total), dtype=self.dtype)
        out[...] = table[:, None, None, :total]
        return out


def _pads(left: int, right: int) -> npt.NDArray[np.int64]:
    """ONNX Pad amounts for ``[rows, heads, positions, width]``: ``left`` before and ``right`` after the positions."""
    return np.array([0, 0, left, 0, 0, 0, right, 0], dtype=np.int64)


def _kv(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["rows", "heads", "length", "width"])


def _control(name: str, size: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [size])


_AXIS = helper.make_tensor("axis", TensorProto.INT64, [1], [2])
_ZERO = helper.make_tensor("zero", TensorProto.INT64, [1], [0])


def _merge_graph(count: int, elem: int) -> onnx.ModelProto:
    """Per tensor: ``Concat(Pad(a[:, :, :len_a], pad_a), Pad(b[:, :, :len_b], pad_b))`` along the rows."""
    nodes = []
    for i in range(count):
        for side in "ab":
            nodes += [helper.make_node("Slice", [f"{side}{i}", "zero", f"len_{side}", "axis"], [f"s{side}{i}"]),
                      helper.make_node("Pad", [f"s{side}{i}", f"pad_{side}"], [f"p{side}{i}"])]
        nodes.append(helper.make_node("Concat", [f"pa{i}", f"pb{i}"], [f"out{i}"], axis=0))
    inputs = [_kv(f"{side}{i}", elem) for side in "ab" for i in range(count)]
    inputs += [_control(name, size) for name, size in (("len_a", 1), ("len_b", 1), ("pad_a", 8), ("pad_b", 8))]
    return _model(nodes, inputs, [_kv(f"out{i}", elem) for i in range(count)], [_AXIS, _ZERO])


def _select_graph(count: int, elem: int) -> onnx.ModelProto:
    """Per tensor: ``Pad(Gather(x, rows)[:, :, start:end], pads)``."""
    nodes = []
    for i in range(count):
        nodes += [helper.make_node("Gather", [f"x{i}", "rows"], [f"g{i}"], axis=0),
                  helper.make_node("Slice", [f"g{i}", "start", "end", "axis"], [f"s{i}"]),
                  helper.make_node("Pad", [f"s{i}", "pads"], [f"out{i}"])]
    inputs = [_kv(f"x{i}", elem) for i in range(count)]
    inputs += [_control(name, size) for name, size in (("rows", "kept"), ("start", 1), ("end", 1), ("pads", 8))]
    return _model(nodes, inputs, [_kv(f"out{i}", elem) for i in range(count)], [_AXIS])


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "kv_rebatch", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
