"""The studies room: orchestration of each study (``run_<study>(loaded, store, cfg)``), the
sweep runner every study shares (``sweep``), and each study's config and model-side steps
(``layers_config``, ``heads_config``, ``heads_importance``, ``heads_text``, ``heads_train``,
``safety_select``).

Imports interventions, evals, capture, data and model below it.
"""
