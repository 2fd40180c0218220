"""A search form for HTML pages: a photo (optionally cropped) and/or a description."""

from __future__ import annotations

from typing import Any

from django import forms

from visualsearch.conf import visualsearch_settings
from visualsearch.images import InvalidImage, open_query_image

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
