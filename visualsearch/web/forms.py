"""Forms: the one upload form (and the search forms built on it), and an image upload field
for the image model."""

from __future__ import annotations

from typing import Any

from django import forms
from django.template.defaultfilters import filesizeformat

from visualsearch.conf import visualsearch_settings
from visualsearch.ingest.images import InvalidImage, decode_stored, open_query_image, read_limited

CROP_FIELDS = ("crop_x", "crop_y", "crop_width", "crop_height")


class ImageUploadForm(forms.Form):
    """The one upload form: ``cleaned_data["picture"]`` is the decoded (cropped) RGB image.

    The file is opened by :func:`~visualsearch.ingest.images.open_query_image`, within
    ``MAX_IMAGE_BYTES``, ``MAX_IMAGE_PIXELS`` and ``MAX_QUERY_PIXELS``; anything that is not
    a usable image becomes a form error saying why. Subclasses add fields (the shop's search
    page, the admin's search by image) or drop the crop box (``crop_x = None`` …).
    """

    image = forms.FileField(
        label="Photo",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
        help_text="A photo of the product you are looking for (JPEG, PNG, WebP, GIF).",
    )
    crop_x = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    crop_y = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    crop_width = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    crop_height = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        crop = [data.get(name) for name in CROP_FIELDS if name in self.fields]
        crop += [None] * (len(CROP_FIELDS) - len(crop))
        if any(value is not None for value in crop) and any(value is None for value in crop):
            raise forms.ValidationError("A crop box needs x, y, width and height.")
        upload = data.get("image")
        data["picture"] = None
        if upload:
            try:
                data["picture"] = open_query_image(
                    upload, crop=tuple(crop) if crop[0] is not None else None
                )
            except InvalidImage as exc:
                self.add_error("image", str(exc))
        elif crop[0] is not None:
            self.add_error("image", "Choose a photo to crop.")
        return data


class ImageSearchForm(ImageUploadForm):
    """The shop's search: a photo (with an optional crop box), a description, or both."""

    q = forms.CharField(
        label="Description",
        required=False,
        max_length=200,
        help_text='For example "red summer dress".',
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "image" in self.errors:
            return data
        upload = data.get("image")
        data["q"] = (data.get("q") or "").strip()
        if not upload and not data["q"] and not self.errors:
            raise forms.ValidationError("Choose a photo or type a description to search.")
        return data


class EmbeddableImageField(forms.ImageField):
    """An image upload that the embedding pipeline will be able to use, or a form error.

    The file must fit ``MAX_IMAGE_BYTES`` and decode as the worker decodes it (the formats of
    ``visualsearch.ingest.images.FORMATS``, at most ``MAX_IMAGE_PIXELS``), so that staff read the
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
            decode_stored(read_limited(data, max_bytes))  # decoded as the worker will decode it
        except InvalidImage as exc:
            raise forms.ValidationError(str(exc), code="invalid_image") from None
        finally:
            data.seek(0)
        return super().to_python(data)
