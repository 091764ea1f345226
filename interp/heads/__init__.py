"""Attention-head study: per-head gates on ``z``, head importance (ablation, gradient), and a
Mixture-of-Head style router. Interventions built on these live in interp.interventions.heads."""
