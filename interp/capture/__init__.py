"""The capture room: prompt formatting and batching, the three hook backends (nnsight,
TransformerLens, plain torch hooks) and ``capture``, which runs prompts through a model and
writes the activations to the store.

Imports from ``interp.data`` and ``interp.model`` below it.
"""
