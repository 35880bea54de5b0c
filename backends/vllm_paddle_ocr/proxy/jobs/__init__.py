"""Asynchronous /layout-parsing jobs: the record, the stores (SQLite and files, or Redis) and the runner."""
