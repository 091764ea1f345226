"""The model-comparison page: every model of the store overlaid where the literature compares models.

Built by ``reports.build`` when the store holds study runs of more than one model. Each model
contributes its newest run of each study; x axes are relative (fraction of layers dropped,
fraction of weights pruned, relative depth) so models of different sizes share one axis.
"""

from __future__ import annotations

import html

import duckdb

from reports import charts
from reports.html import Page
from reports.panels import Panel, Part, render
from store.queries import models as q

TITLE = "Models compared"


def wanted(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store holds study runs of more than one model."""
    return len(q.study_models(con)) > 1


def page(con: duckdb.DuckDBPyConnection) -> Page:
    models = q.study_models(con)
    drops = Panel("Loss against the fraction of layers dropped", q.layer_drop_sql, (),
        lambda df: charts.curves(df, x="fraction_dropped", y="value", series="model", facet="panel",
                                 title="after dropping blocks of layers (Gromov et al. 2024)",
                                 x_title="fraction of layers dropped", y_title="value", series_title="model",
                                 tooltip=["model", "strategy", "metric", "n", "fraction_dropped", "value"]),
        caption="norm_loss is the next-token NLL divided by log(vocabulary size), so models with different "
                "vocabularies share a scale (1 = uniform guessing). Fraction 0 is each model unpruned; random "
                "blocks are averaged over seeds.",
        empty="No layer-dropping runs with perplexity in this store.")
    prune = Panel("Perplexity against the fraction of weights pruned", q.pruning_sql, (),
        lambda df: charts.curves(df, x="fraction_pruned", y="value", series="model", facet="recipe", log_y=True,
                                 title="pruning every projection, unstructured", x_title="fraction of weights pruned",
                                 y_title="perplexity (log scale)", series_title="model",
                                 tooltip=["model", "recipe", "fraction_pruned", "value"]),
        caption="Share of all prunable projection weights removed; fraction 0 is each model unpruned.",
        empty="No weight-pruning runs that prune every module in this store.")
    probes = Panel("Probe accuracy against relative depth", q.probe_depth_sql, (),
        lambda df: charts.curves(df, x="depth", y="accuracy", series="model", facet="panel",
                                 title="cross-validated probe accuracy (last token)",
                                 x_title="relative depth (layer / (layers - 1))", y_title="accuracy",
                                 series_title="model", tooltip=["model", "panel", "layer", "depth", "accuracy", "std"]),
        caption="Where each model makes the classes linearly separable, on a common depth axis.",
        empty="No safety probe runs in this store.")
    parts = (
        Part("The models", (Panel("Models in this store", q.models_sql, ()),)),
        Part("Layer dropping", (drops,)),
        Part("Weight pruning", (prune,)),
        Part("Probes", (probes,)),
    )
    intro = (f"{len(models)} models in one store: {html.escape(', '.join(models))}. Each contributes its newest "
             "run of each study.")
    return Page(slug="models", title=TITLE, intro=intro, sections=tuple(render(con, parts)))
