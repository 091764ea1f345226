"""The DuckDB activation store: schema, writers and readers. The only place that writes SQL."""

from store.db import DEFAULT_STORE, Store, StoreError

__all__ = ["DEFAULT_STORE", "Store", "StoreError"]
