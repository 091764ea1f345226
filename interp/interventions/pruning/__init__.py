"""Unstructured and semi-structured (N:M) weight pruning: magnitude and Wanda scores.

``masks`` holds the pure mask maths, ``targets`` resolves module selections per
architecture, ``calibrate`` collects Wanda's input-feature norms (one-shot or layer by
layer on the progressively pruned model), ``apply`` prunes a loaded model reversibly.
The intervention value is ``interp.interventions.prune.PruneSpec``.
"""
