// Search page enhancements: drag and drop a photo, preview it, and draw a crop box on it.
// Without JavaScript the form still works: file input, description, submit.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var input = form.querySelector('input[name="image"]');
  var zone = document.getElementById("dropzone");
  var stage = document.getElementById("crop-stage");
  var picture = document.getElementById("crop-image");
  var box = document.getElementById("crop-box");
  var help = document.getElementById("crop-help");
  var fields = ["crop_x", "crop_y", "crop_width", "crop_height"].map(function (name) {
    return form.querySelector('input[name="' + name + '"]');
  });
  var MIN_SIDE = 8; // pixels of the photo; the server refuses smaller crops
  var start = null;

  form.querySelectorAll(".js-only").forEach(function (el) { el.hidden = false; });

  function setCrop(values) {
    fields.forEach(function (field, i) { field.value = values ? values[i] : ""; });
    if (!values) box.hidden = true;
  }

  function show(file) {
    setCrop(null);
    if (!file || !file.type.startsWith("image/")) { stage.hidden = true; help.hidden = true; return; }
    if (picture.src) URL.revokeObjectURL(picture.src);
    picture.src = URL.createObjectURL(file);
    stage.hidden = false;
    help.hidden = false;
  }

  input.addEventListener("change", function () { show(input.files[0]); });

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files;
    show(files[0]);
  });

  function point(event) {
    var rect = picture.getBoundingClientRect();
    return {
      x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
      y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
    };
  }

  function draw(a, b) {
    var left = Math.min(a.x, b.x), top = Math.min(a.y, b.y);
    box.style.left = left + "px";
    box.style.top = top + "px";
    box.style.width = Math.abs(a.x - b.x) + "px";
    box.style.height = Math.abs(a.y - b.y) + "px";
    box.hidden = false;
    // Displayed pixels → the photo's own pixels (the browser shows it EXIF-rotated, as the
    // server reads it).
    var scale = picture.naturalWidth / picture.clientWidth;
    var crop = [
      Math.round(left * scale),
      Math.round(top * scale),
      Math.round(Math.abs(a.x - b.x) * scale),
      Math.round(Math.abs(a.y - b.y) * scale),
    ];
    crop[2] = Math.min(crop[2], picture.naturalWidth - crop[0]);
    crop[3] = Math.min(crop[3], picture.naturalHeight - crop[1]);
    setCrop(crop[2] >= MIN_SIDE && crop[3] >= MIN_SIDE ? crop : null);
  }

  stage.addEventListener("pointerdown", function (event) {
    event.preventDefault();
    start = point(event);
    stage.setPointerCapture(event.pointerId);
  });
  stage.addEventListener("pointermove", function (event) {
    if (start) draw(start, point(event));
  });
  stage.addEventListener("pointerup", function (event) {
    if (start) draw(start, point(event));
    start = null;
  });
  document.getElementById("crop-clear").addEventListener("click", function () { setCrop(null); });
})();
