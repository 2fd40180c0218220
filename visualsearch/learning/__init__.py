"""Training, run by management commands only: the catalog projection (adapt) and the text
→ image bridge (bridge). Query and ingestion code never imports it; what they apply at run
time lives in :mod:`visualsearch.encoders` (projection, bridge)."""
