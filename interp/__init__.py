"""interp: a mechanistic-interpretability analysis suite (activation store, studies, reports)."""

__version__ = "0.1.0"
