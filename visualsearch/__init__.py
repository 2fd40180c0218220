"""visualsearch: visual product search for Django on Postgres + pgvector."""

__version__ = "0.1.0"
