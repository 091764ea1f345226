"""The store's one exception type (its own module so every store module can raise it)."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked; the message says why and what to do."""
