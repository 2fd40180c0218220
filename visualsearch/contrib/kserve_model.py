"""Serve the project's image encoder over KServe v2 (Open Inference Protocol), for
:class:`visualsearch.encoders.remote.KServeV2Encoder`.

On the inference host, with the project's settings (the same ``ENCODER`` and
``ENCODER_OPTIONS`` as the workers, ``"device": "cuda"`` for CLIP on a GPU)::

    pip install "django-visualsearch[kserve]"
    DJANGO_SETTINGS_MODULE=mysite.settings \\
        python -m visualsearch.contrib.kserve_model --http_port 8080 --enable_grpc false

It loads the encoder once, then answers ``GET /v2/health/ready``, ``GET /v2/models/visualsearch``
(inputs ``IMAGE``, and ``TEXT`` for CLIP; output ``EMBEDDING`` ``[-1, d]``) and
``POST /v2/models/visualsearch/infer``. Every answer carries the encoder's model id in
``parameters.model_id``. kserve's other options (``--workers``, ``--max_threads``…) apply.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_server
from kserve.errors import InvalidInput

from visualsearch.encoders.base import BaseEncoder
from visualsearch.encoders.remote import IMAGE_INPUT, OUTPUT, TEXT_INPUT, decode_payload

DEFAULT_NAME = "visualsearch"


class EncoderModel(Model):
    """A kserve ``Model`` around a visualsearch encoder: images and texts in, unit rows out."""

    def __init__(self, name: str, encoder: BaseEncoder, max_pixels: int = 40_000_000) -> None:
        super().__init__(name)
        self.encoder, self.max_pixels = encoder, max_pixels

    def load(self) -> bool:
        """Load the weights now (one encode), so the first request does not wait for them."""
        self.encoder.warm_up()
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        inputs = [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
        if self.encoder.supports_text:
            inputs.append({"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})
        return inputs

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, self.encoder.dimensions]}]

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        if len(payload.inputs) != 1:
            raise InvalidInput(f"Send one input, {IMAGE_INPUT} or {TEXT_INPUT}.")
        tensor = payload.inputs[0]
        items = [_text(item) for item in tensor.as_numpy().reshape(-1)]
        if tensor.name == IMAGE_INPUT:
            try:
                images = [decode_payload(item, self.max_pixels) for item in items]
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            rows = self.encoder.encode_images(images) if images else None
        elif tensor.name == TEXT_INPUT and self.encoder.supports_text:
            rows = self.encoder.encode_texts(items) if items else None
        else:
            raise InvalidInput(f"Unknown input {tensor.name!r}: {IMAGE_INPUT} or {TEXT_INPUT}.")
        if rows is None:
            rows = np.zeros((0, self.encoder.dimensions), dtype=np.float32)
        binary = any(
            (output.parameters or {}).get("binary_data") for output in payload.request_outputs or []
        )
        output = InferOutput(OUTPUT, list(rows.shape), "FP32")
        output.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32), binary)
        return InferResponse(
            payload.id,
            self.name,
            [output],
            parameters={"model_id": self.encoder.model_id},
            use_binary_outputs=binary,
        )


def _text(item: Any) -> str:
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def main(argv: list[str] | None = None) -> None:
    """Set Django up, build the configured encoder and serve it until stopped."""
    import django

    parser = argparse.ArgumentParser(parents=[kserve_server.parser], conflict_handler="resolve")
    parser.add_argument("--model_name", default=DEFAULT_NAME, help="The served model's name.")
    args, _unknown = parser.parse_known_args(argv)
    django.setup()
    from visualsearch.conf import visualsearch_settings
    from visualsearch.encoders import get_encoder

    model = EncoderModel(
        args.model_name, get_encoder(), int(visualsearch_settings.MAX_IMAGE_PIXELS)
    )
    model.load()
    ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=args.workers,
    ).start([model])


if __name__ == "__main__":
    main()
