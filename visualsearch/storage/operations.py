"""Migration operations for the host's models.

``EmbeddingStorage`` keeps the vectors inside the table rows. A ``vector`` column is stored
``EXTERNAL`` by default: a row over Postgres' TOAST threshold (about 2 KB, reached by 512-d
vectors and larger) keeps its vector in the TOAST table, and every row a query reads then
costs an extra index lookup and two more page reads. The exact scan over the rows a filter
keeps reads each row's vector, and takes about twice as long that way
(``bench/vector_storage.py``, docs/performance.md). Add the operation to the migration
that creates the image model::

    from visualsearch.storage.operations import EmbeddingStorage

    operations = [
        migrations.CreateModel(name="ProductImage", ...),
        EmbeddingStorage("productimage"),
    ]
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

#: ``ALTER COLUMN … SET STORAGE`` values: ``plain`` never moves the vector out of the row
#: (a 1280-d vector, 5 KB, still fits an 8 KB page; a row that does not fit is an error),
#: ``main`` moves it out only when the row cannot fit otherwise, ``external`` is pgvector's
#: default.
STORAGES = ("plain", "main", "external", "extended")


class EmbeddingStorage(migrations.operations.base.Operation):
    """``ALTER TABLE … ALTER COLUMN embedding SET STORAGE PLAIN`` (or ``storage``).

    Changes how new rows are written; rows written before keep their vectors out of line
    until the table is rewritten (``VACUUM FULL``) or re-embedded. Reversible: going back
    restores ``EXTERNAL``, pgvector's default.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name: str, storage: str = "plain", field: str = "embedding") -> None:
        if storage.lower() not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
        self.model_name = model_name
        self.storage = storage.lower()
        self.field = field

    def deconstruct(self) -> tuple[str, list, dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name}
        if self.storage != "plain":
            kwargs["storage"] = self.storage
        if self.field != "embedding":
            kwargs["field"] = self.field
        return self.__class__.__qualname__, [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # the model state does not record column storage

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        self._set_storage(app_label, schema_editor, to_state, self.storage)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        self._set_storage(app_label, schema_editor, to_state, "external")

    def _set_storage(self, app_label, schema_editor, state, storage: str) -> None:
        model = state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        column = model._meta.get_field(self.field).column
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"ALTER TABLE {quote(model._meta.db_table)} ALTER COLUMN {quote(column)} "
            f"SET STORAGE {storage.upper()}"
        )

    def describe(self) -> str:
        return f"Store {self.model_name}.{self.field} {self.storage.upper()}"

    @property
    def migration_name_fragment(self) -> str:
        return f"{self.model_name.lower()}_{self.field}_storage"
