"""Forms: the search form for HTML pages, and an image upload field for the image model."""

from __future__ import annotations

from typing import Any

from django import forms
from django.template.defaultfilters import filesizeformat

from visualsearch.conf import visualsearch_settings
from visualsearch.images import InvalidImage, decode_image, open_query_image, read_limited

CROP_FIELDS = ("crop_x", "crop_y", "crop_width", "crop_height")


class ImageSearchForm(forms.Form):
    """Validates a search: ``cleaned_data["picture"]`` is the decoded, cropped RGB image.

    The file is read with the ``MAX_IMAGE_BYTES`` and ``MAX_IMAGE_PIXELS`` caps; anything
    that is not a usable image becomes a form error saying why.
    """

    image = forms.FileField(
        label="Photo",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
        help_text="A photo of the product you are looking for (JPEG, PNG, WebP, GIF).",
    )
    q = forms.CharField(
        label="Description",
        required=False,
        max_length=200,
        help_text='For example "red summer dress".',
    )
    crop_x = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    crop_y = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    crop_width = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    crop_height = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        crop = [data.get(name) for name in CROP_FIELDS]
        if any(value is not None for value in crop) and any(value is None for value in crop):
            raise forms.ValidationError("A crop box needs x, y, width and height.")
        upload = data.get("image")
        data["picture"] = None
        if upload:
            try:
                data["picture"] = open_query_image(
                    upload,
                    crop=tuple(crop) if crop[0] is not None else None,
                    max_bytes=visualsearch_settings.MAX_IMAGE_BYTES,
                    max_pixels=visualsearch_settings.MAX_IMAGE_PIXELS,
                )
            except InvalidImage as exc:
                self.add_error("image", str(exc))
                return data
        elif crop[0] is not None:
            self.add_error("image", "Choose a photo to crop.")
        data["q"] = (data.get("q") or "").strip()
        if not upload and not data["q"] and not self.errors:
            raise forms.ValidationError("Choose a photo or type a description to search.")
        return data


class EmbeddableImageField(forms.ImageField):
    """An image upload that the embedding pipeline will be able to use, or a form error.

    The file must fit ``MAX_IMAGE_BYTES`` and decode as the worker decodes it (the formats of
    ``visualsearch.images.FORMATS``, at most ``MAX_IMAGE_PIXELS``), so that staff read the
    reason at once instead of finding a ``failed`` row later. ``EmbeddedImageAdminMixin`` uses
    it for the image field; use it in your own forms of the image model too.
    """

    def to_python(self, data: Any) -> Any:
        size = getattr(data, "size", None)
        if data in self.empty_values or not hasattr(data, "read") or size == 0:
            return super().to_python(data)  # Django's messages: no file, empty file
        max_bytes = int(visualsearch_settings.MAX_IMAGE_BYTES)
        if size is not None and size > max_bytes:
            raise forms.ValidationError(
                f"The file is larger than the {filesizeformat(max_bytes)} limit.",
                code="file_too_large",
            )
        try:
            decode_image(
                read_limited(data, max_bytes),
                max_pixels=int(visualsearch_settings.MAX_IMAGE_PIXELS),
            )
        except InvalidImage as exc:
            raise forms.ValidationError(str(exc), code="invalid_image") from None
        finally:
            data.seek(0)
        return super().to_python(data)
