"""Ingestion: image and text saves noticed (handlers), queued (tasks), embedded by the one
loop (pipeline, with its image and text strategies), uploads decoded safely (images), and
the embedding backlog reported (status)."""
