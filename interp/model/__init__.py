"""The model room: loading (hub, local directory, embedded PyPI models), the site table that
maps TransformerLens hook names onto each architecture's modules, hooks and pure tensor ops.

Imports nothing from the other rooms of ``interp`` (only ``interp.provenance`` and ``store``).
"""
