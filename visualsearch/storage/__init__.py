"""Where the vectors live and how they are indexed and read.

:mod:`~visualsearch.storage.layout` (the vector rows of the configured image model, on its
own table or in visualsearch's), :mod:`~visualsearch.storage.lookup` (the host's models named
in the settings), :mod:`~visualsearch.storage.fields` and
:mod:`~visualsearch.storage.indexes` (columns and indexes), :mod:`~visualsearch.storage.
operations` (migration operations), :mod:`~visualsearch.storage.copies` and
:mod:`~visualsearch.storage.filter_indexes` (filter fields copied onto image rows, partial
indexes per value), :mod:`~visualsearch.storage.statements` (compiled SQL reused by shape).
"""

from visualsearch.storage.layout import ImageStorage, image_storage, ready_rows

__all__ = ["ImageStorage", "image_storage", "ready_rows"]
