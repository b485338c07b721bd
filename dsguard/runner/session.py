"""The decoder's ONNX Runtime session: providers, tuned options, and prefill / decode steps with IO binding.

The graph is loaded fused (:mod:`dsguard.runner.fusion`) when its patterns match. The key/value cache
stays in OrtValues on the session's device from one step to the next (``"cuda"`` with the CUDA
provider, ``"cpu"`` otherwise; the code path is the same); with the fused attention it is written in
place, in buffers with room to grow. Token ids, positions and the attention mask (or bias) are host
buffers reused step to step; only the last position's logits come back to the host, into a buffer
bound once per batch size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as C

from dsguard.runner.bundle import Bundle
from dsguard.runner.errors import BundleError
from dsguard.runner.fused_attention import ATTENTION_BIAS, SEQLENS, TOTAL_LENGTH, AttentionBias
from dsguard.runner.fusion import fuse_decoder
from dsguard.runner.kvcache import KVCache, KVOps, PaddingMask, device_of

logger = logging.getLogger("dsguard.runner")

DEVICES = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}
PREFILL_CHUNK = 256
"""Prompt tokens per prefill call: bounds the ``[chunk, vocab]`` logits a long prompt allocates."""
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"

IntArray = npt.NDArray[np.int64]


def choose_providers(preferred: Sequence[str]) -> list[str]:
    """The preferred providers this onnxruntime build has, in order, ending with the CPU fallback."""
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available and p in DEVICES]
    skipped = [p for p in preferred if p not in chosen]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if skipped:
        logger.info("execution providers not available here: %s", ", ".join(skipped))
    return chosen


def default_threads(parameters: int, cores: int | None = None) -> int:
    """Intra-op threads for decoding: one for tiny models, where handing work to threads costs more than it
    saves (a plan may add a second session, see :mod:`dsguard.runner.threadplan`), else up to 8 cores."""
    cores = cores or available_cores()
    if parameters < 20_000_000:
        return 1
    return max(1, min(cores, 8))


def available_cores() -> int:
    """Cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def session_options(threads: int, *, spin: bool = False) -> ort.SessionOptions:
    """Options for token-by-token decoding: all graph optimizations, sequential execution, fixed threads.

    Worker threads sleep rather than spin between kernels unless ``spin``: spinning threads compete with
    the host application (and each other) for cores, which made medium-size decoding 2x slower on a busy
    machine. Work is split into blocks handed out as threads free up, so one thread the OS delays does
    not hold up every kernel: so, two threads decode the medium model about as fast as one on a busy
    two-core machine (30% faster than without it) and 1.6-1.9x faster than one on a quiet one.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if threads > 1 and not spin:
        options.add_session_config_entry("session.dynamic_block_base", "4")
    options.log_severity_level = 3
    return options


class DecoderSession:
    """One loaded decoder graph and the steps that drive it."""

    def __init__(self, bundle: Bundle, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, *, fuse: bool = True, spin: bool = False) -> None:
        self.bundle = bundle
        shape = bundle.shape
        self.threads = threads or default_threads(shape.num_parameters())
        self.spin = spin
        chosen = choose_providers(providers)
        self.session = self._load(chosen, fuse)
        if bundle.memory is not None:
            bundle.memory.release()
        self.provider = self.session.get_providers()[0]
        self.device = DEVICES.get(self.provider, "cpu")
        logger.info("runner %s: provider %s (device %s), %d %sthread(s), %s", bundle.model_path.name, self.provider,
                    self.device, self.threads, "spinning " if spin else "",
                    "fused graph" if self.fused else "graph as exported")
        names = bundle.names
        self.names = names
        self.past_names = names.past(shape.num_hidden_layers)
        self.present_names = names.present(shape.num_hidden_layers)
        self.vocab_size = shape.vocab_size
        self._kv_shape = (shape.num_key_value_heads, shape.head_dim)
        self._native = self.session._sess
        self._device = device_of(self.device)
        self._cpu = device_of("cpu")
        self._attention_name = ATTENTION_BIAS if self.bias is not None else names.attention_mask
        self._present_slots = range(1, len(self.present_names) + 1)
        self.kv = KVOps(len(self.past_names), bundle.kv_dtype, chosen, self.device)
        self._reset_io()

    def _reset_io(self) -> None:
        """The IO binding and the host buffers steps reuse."""
        self._io = C.SessionIOBinding(self._native)
        self._constants: dict[tuple[np.dtype[Any], int], npt.NDArray[Any]] = {}
        bias = self.bias
        self._masks = PaddingMask(np.dtype(np.int64), 0, 1) if bias is None else PaddingMask(
            np.dtype(bias.dtype), bias.fill, 0.0, bias.groups)
        self._attention_values: npt.NDArray[Any] = np.ones(0, dtype=np.int64)
        self._seqlens: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._total: npt.NDArray[np.int32] = np.zeros((), dtype=np.int32)
        self._bound: list[Any] | None = None
        self._rows = 0
        self._ids: IntArray = np.zeros(0, dtype=np.int64)
        self._positions: IntArray = np.zeros(0, dtype=np.int64)
        self._logits: npt.NDArray[Any] = np.empty((0, 1, self.vocab_size), dtype=self.bundle.logits_dtype)
        self._last_logits = self._logits[:, 0, :]
        self._arange = np.arange(self.bundle.context_length + 1, dtype=np.int64)

    def _load(self, providers: list[str], fuse: bool) -> ort.InferenceSession:
        path = self.bundle.model_path
        memory = self.bundle.memory
        options = session_options(self.threads, spin=self.spin)
        self.fused = False
        self.bias: AttentionBias | None = None
        self._in_place = self._mask_lengths = self.bundle.in_place_attention
        # The fused kernels are checked on the CPU provider only; other providers run the graph as exported.
        if fuse and providers[0] == "CPUExecutionProvider":
            try:
                model = memory.model() if memory is not None else onnx.load(str(path), load_external_data=False)
                report = fuse_decoder(model, max_positions=self.bundle.context_length)
                if report.total:
                    if memory is not None:
                        memory.add_to(options)
                    else:
                        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(path.parent))
                    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
                    self.fused, self.bias = True, report.bias
                    self._in_place = self._in_place or report.attention > 0
                    return session
            except Exception as error:  # the graph as exported still runs; say why it was not fused
                logger.warning("%s: running the graph unfused (%s)", path, error)
                options = session_options(self.threads, spin=self.spin)
        try:
            if memory is None:
                return ort.InferenceSession(str(path), options, providers=providers)
            memory.add_to(options)
            return ort.InferenceSession(memory.graph, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"onnxruntime cannot load the graph: {error}", file=path) from None

    @property
    def in_place(self) -> bool:
        """The graph appends to the cache buffers in place (GroupQueryAttention) instead of concatenating:
        the fused graph, or a model-builder graph (which reads the lengths off ``attention_mask``).

        Its rows keep their own lengths (never padded): a row's cached positions are its position count.
        """
        return self._in_place

    def empty_cache(self, rows: int = 1, capacity: int = 0) -> KVCache:
        """A cache holding no positions yet, with room for ``capacity`` (in-place graphs only)."""
        heads, width = self._kv_shape
        capacity = capacity if self.in_place else 0
        make = C.OrtValue.ortvalue_from_shape_and_type
        values = [make([rows, heads, capacity, width], self.bundle.kv_dtype, self._device) for _ in self.past_names]
        return KVCache(values, rows, 0, capacity)

    def room(self, length: int) -> int:
        """Capacity to allocate for a cache about to hold ``length`` positions: doubling, within the context."""
        return min(max(2 * length, length + 64), self.bundle.context_length) if self.in_place else length

    def prefill(self, prompt: Sequence[int]) -> tuple[npt.NDArray[Any], KVCache]:
        """Runs a prompt alone (batch of one); returns the last position's logits ``[vocab]`` and the cache."""
        *_, done = self.prefill_chunks(prompt)
        assert done is not None
        return done

    def prefill_chunks(self, prompt: Sequence[int]) -> Iterator[tuple[npt.NDArray[Any], KVCache] | None]:
        """``prefill`` one chunk of up to ``PREFILL_CHUNK`` tokens per item: None for each chunk but the last,
        then the last position's logits and the cache. Decode steps may run between two chunks."""
        if not prompt:
            raise ValueError("prefill needs at least one prompt token")
        ids = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        cache = self.empty_cache(1, self.room(ids.shape[1]))
        for start in range(0, ids.shape[1], PREFILL_CHUNK):
            self._io.clear_binding_outputs()
            self._rows = 0
            self._bound = None
            chunk = np.ascontiguousarray(ids[:, start:start + PREFILL_CHUNK])
            end = start + chunk.shape[1]
            last = end == ids.shape[1]
            positions = np.arange(start, end, dtype=np.int64).reshape(1, -1)
            self._io.bind_output(self.names.logits, self._cpu if last else self._device)
            self._bind(chunk, positions, cache)
            if not self._in_place:
                self._bind_attention(self._prompt_attention(start, end))
            lengths = self._bind_lengths(np.array([end - 1], dtype=np.int32), np.array(end, dtype=np.int32))
            cache = self._run(cache, end)
            del lengths
            yield (self._io.get_outputs()[0].numpy()[0, -1], cache) if last else None

    def decode(self, cache: KVCache, tokens: IntArray, positions: IntArray,
               pads: IntArray | None = None) -> tuple[npt.NDArray[Any], KVCache]:
        """One step for every row: ``tokens`` and ``positions`` ``[rows]``, ``pads`` the left padding per row
        (always None for in-place graphs, whose rows hold ``positions[row]`` positions each).

        Returns the logits ``[rows, vocab]`` (a buffer the next step overwrites) and the grown cache.
        """
        rows = cache.rows
        total = int(positions.max()) + 1 if self._in_place else cache.length + 1
        if total > self.bundle.context_length:
            raise ValueError(f"a step to {total} positions passes the context length {self.bundle.context_length}")
        if rows != self._rows:
            self._resize(rows)
        self._ids[:, 0] = tokens
        self._positions[:, 0] = positions
        io = self._io
        if self._in_place:
            self._seqlens[:] = positions
            self._total.fill(total)
            if self._mask_lengths:
                self._bind_lengths(self._seqlens, self._total)
            if total > cache.capacity:
                cache = self.kv.select(cache, np.arange(rows), 0, self.room(total))
            if cache.values is not self._bound:
                self._bind_cache(cache)
            self._native.run_with_iobinding(io, None)
            cache.length = total
            return self._last_logits, cache
        self._bind_attention(self._step_attention(rows, total, pads))
        for name, value in zip(self.past_names, cache.values, strict=True):
            io.bind_ortvalue_input(name, value)
        device = self._device
        for name in self.present_names:
            io.bind_output(name, device)
        self._native.run_with_iobinding(io, None)
        outputs = io.get_outputs()
        return self._last_logits, KVCache([outputs[i] for i in self._present_slots], rows, total)

    def _resize(self, rows: int) -> None:
        """Host buffers for a batch of ``rows``, bound once: later steps only rewrite their contents."""
        self._rows = rows
        self._ids = np.zeros((rows, 1), dtype=np.int64)
        self._positions = np.zeros((rows, 1), dtype=np.int64)
        self._logits = np.empty((rows, 1, self.vocab_size), dtype=self._logits.dtype)
        self._last_logits = self._logits[:, 0, :]
        io, cpu, names = self._io, self._cpu, self.names
        io.clear_binding_outputs()
        self._bound = None
        io.bind_output(names.logits, cpu, self._logits.dtype, list(self._logits.shape), self._logits.ctypes.data)
        io.bind_ortvalue_input(names.input_ids, C.OrtValue.ortvalue_from_numpy(self._ids, cpu))
        if names.position_ids:
            io.bind_ortvalue_input(names.position_ids, C.OrtValue.ortvalue_from_numpy(self._positions, cpu))
        if self._in_place:
            self._seqlens = np.zeros(rows, dtype=np.int32)
            self._total = np.zeros((), dtype=np.int32)
            self._bind_lengths(self._seqlens, self._total)

    def _step_attention(self, rows: int, total: int, pads: IntArray | None) -> npt.NDArray[Any]:
        """The attention mask (or the graph's bias input) for one decode step."""
        bias = self.bias
        if pads is not None and bool(pads.any()):
            return self._masks.rows(pads, total)
        if bias is None:
            return self._constant(rows * total, np.dtype(np.int64), 1).reshape(rows, total)
        dtype = np.dtype(bias.dtype)
        return self._constant(rows * bias.groups * total, dtype, 0).reshape(rows, 1, bias.groups, total)

    def _prompt_attention(self, start: int, end: int) -> npt.NDArray[Any]:
        """Mask or bias for prompt positions ``start..end`` of one row, with ``start`` positions already cached."""
        if self.bias is None:
            return np.ones((1, end), dtype=np.int64)
        bias = self.bias
        visible = self._range(end)[None, :] <= self._range(end)[start:, None]
        values = np.where(visible, 0.0, bias.fill).astype(bias.dtype)
        return np.ascontiguousarray(np.tile(values, (bias.groups, 1))).reshape(1, 1, -1, end)

    def _constant(self, size: int, dtype: np.dtype[Any], value: int) -> npt.NDArray[Any]:
        """The first ``size`` items of a reused host buffer holding ``value`` everywhere (never written to)."""
        buffer = self._constants.get((dtype, value))
        if buffer is None or buffer.size < size:
            buffer = self._constants[(dtype, value)] = np.full(max(2 * size, 4096), value, dtype=dtype)
        return buffer[:size]

    def _range(self, size: int) -> IntArray:
        if self._arange.size < size:
            self._arange = np.arange(2 * size, dtype=np.int64)
        return self._arange[:size]

    def _bind_lengths(self, seqlens: npt.NDArray[np.int32], total: npt.NDArray[np.int32]) -> tuple[Any, Any]:
        """Binds GroupQueryAttention's lengths (in-place graphs only); the arrays must outlive the run.

        Model-builder graphs read them off ``attention_mask``: row ``r`` holds ``seqlens[r] + 1`` ones, then
        zeros up to ``total`` (rows are right-padded); the fused graph takes them as inputs.
        """
        if self._mask_lengths:
            if int(total) > 0:  # zero: the host buffers of a new batch size, bound before any step
                self._bind_attention((self._range(int(total))[None, :] <= seqlens[:, None]).astype(np.int64))
        elif self._in_place:
            self._io.bind_ortvalue_input(SEQLENS, C.OrtValue.ortvalue_from_numpy(seqlens, self._cpu))
            self._io.bind_ortvalue_input(TOTAL_LENGTH, C.OrtValue.ortvalue_from_numpy(total, self._cpu))
        return seqlens, total

    def _bind_attention(self, values: npt.NDArray[Any]) -> None:
        self._attention_values = values
        self._io.bind_ortvalue_input(self._attention_name, C.OrtValue.ortvalue_from_numpy(values, self._cpu))

    def _bind(self, ids: IntArray, positions: IntArray, cache: KVCache) -> None:
        io, cpu, names = self._io, self._cpu, self.names
        io.bind_ortvalue_input(names.input_ids, C.OrtValue.ortvalue_from_numpy(ids, cpu))
        if names.position_ids:
            io.bind_ortvalue_input(names.position_ids, C.OrtValue.ortvalue_from_numpy(positions, cpu))
        self._bind_cache(cache)

    def _bind_cache(self, cache: KVCache) -> None:
        """Past inputs, and present outputs: the same buffers when the graph writes in place, else new ones."""
        io = self._io
        for name, value in zip(self.past_names, cache.values, strict=True):
            io.bind_ortvalue_input(name, value)
        if self._in_place:
            for name, value in zip(self.present_names, cache.values, strict=True):
                io.bind_ortvalue_output(name, value)
            self._bound = cache.values
            return
        for name in self.present_names:
            io.bind_output(name, self._device)

    def _run(self, cache: KVCache, total: int) -> KVCache:
        self._native.run_with_iobinding(self._io, None)
        if self._in_place:
            cache.length = total
            return cache
        outputs = self._io.get_outputs()
        return KVCache([outputs[i] for i in self._present_slots], cache.rows, total)

    def merge(self, first: KVCache, second: KVCache) -> KVCache:
        """Rows of ``first`` then rows of ``second``: the shorter left-padded to the longer's length, or (in-place
        graphs) each row keeping its own length."""
        return self.kv.merge(first, second, self.room(max(first.length, second.length)), ragged=self._in_place)

    def select(self, cache: KVCache, rows: IntArray, drop: int) -> KVCache:
        """Only the given rows, without the first ``drop`` positions (padding that every kept row has)."""
        capacity = max(cache.capacity - drop, 0) if self.in_place else None
        return self.kv.select(cache, rows, drop, capacity)
