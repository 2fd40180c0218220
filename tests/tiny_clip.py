"""Build a tiny, randomly initialised CLIP model in sentence-transformers' on-disk format.

The directory written by :func:`build_tiny_clip` has the same layout as the hub model
``sentence-transformers/clip-ViT-B-32``::

    <path>/
        modules.json                  # one module: sentence_transformers.models.CLIPModel
        0_CLIPModel/
            config.json               # transformers CLIPConfig (tiny text + vision towers)
            model.safetensors         # random weights (fixed seed)
            preprocessor_config.json  # CLIPImageProcessor: resize + centre-crop to ``image_size``
            tokenizer_config.json     # CLIPTokenizer, model_max_length 77
            tokenizer.json            # same BPE, serialised by the tokenizers backend
            vocab.json                # tiny byte-level BPE vocab (521 entries)
            merges.txt                # a handful of merges

so ``SentenceTransformer(str(path), device="cpu")`` loads it fully offline and can embed both
images and texts into the same ``projection_dim``-sized space. Nothing is downloaded; the
weights are random, so the embeddings are only meaningful as "deterministic and distinct".
"""

from __future__ import annotations

import json
import pathlib

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.utils import logging as hf_logging

__all__ = ["build_tiny_clip"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TEXT_LENGTH = 77
# A few common English merges so some words become multi-character tokens, as in real CLIP.
_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("th", "e</w>"),
    ("e", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("s", "h"),
    ("e", "r</w>"),
)


def _bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2/CLIP's reversible mapping from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points), strict=True))


def _write_tokenizer_files(directory: pathlib.Path) -> None:
    """Write a tiny CLIP BPE ``vocab.json`` / ``merges.txt`` pair into ``directory``.

    The vocabulary mirrors the real CLIP ordering: the 256 byte-level characters, the same
    characters with the ``</w>`` end-of-word suffix, the merged tokens, then the special tokens.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(pair) for pair in _MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = ["#version: 0.2"] + [f"{left} {right}" for left, right in _MERGES]
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def build_tiny_clip(
    path: pathlib.Path,
    *,
    projection_dim: int = 32,
    image_size: int = 32,
    seed: int = 0,
) -> pathlib.Path:
    """Write a tiny random CLIP model loadable by ``sentence_transformers.SentenceTransformer``.

    Args:
        path: Output directory (created if missing). Existing files with the same names are
            overwritten.
        projection_dim: Size of the shared text/image embedding space, i.e. the width of the
            vectors returned by ``SentenceTransformer.encode``.
        image_size: Images are resized (shortest edge) and centre-cropped to this many pixels
            square. Must be a multiple of the patch size (8).
        seed: Seed for the random weight initialisation; the same seed gives identical weights.

    Returns:
        ``path``, for convenience.
    """
    patch_size = 8
    if image_size % patch_size:
        raise ValueError(f"image_size must be a multiple of {patch_size}, got {image_size}")

    path = pathlib.Path(path)
    module_dir = path / "0_CLIPModel"
    module_dir.mkdir(parents=True, exist_ok=True)

    _write_tokenizer_files(module_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(module_dir), model_max_length=MAX_TEXT_LENGTH)
    # from_pretrained records these loading flags; keep them out of the saved tokenizer_config.json.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    # The PIL flavour needs no torchvision; it is saved as "CLIPImageProcessor", so AutoProcessor
    # picks whichever backend is installed when loading.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    # Saved separately (not via CLIPProcessor.save_pretrained, which in transformers v5 folds the
    # image-processor settings into processor_config.json) to match the hub layout; AutoProcessor
    # still assembles a CLIPProcessor from these files using config.json's model_type.
    image_processor.save_pretrained(str(module_dir))
    tokenizer.save_pretrained(str(module_dir))

    config = CLIPConfig(
        projection_dim=projection_dim,
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_TEXT_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": projection_dim,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": projection_dim,
        },
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
        torch.manual_seed(seed)
        model = CLIPModel(config)
    progress_bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # hide the "Writing model shards" bar in test output
    try:
        model.save_pretrained(str(module_dir), safe_serialization=True)
    finally:
        if progress_bars_were_enabled:
            hf_logging.enable_progress_bar()

    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "0_CLIPModel",
            "type": "sentence_transformers.models.CLIPModel",
        }
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    return path
