"""The Compare page's Plotly figures: AUROC bars with published markers, ROC and validation curves.

Presentation, not logic: the numbers come from :mod:`core.services.comparison`. The leading
underscore marks this file as a helper, not a page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.services import catalog, comparison

#: The two metrics of the bar figure: column title in the results table, results-file field.
AUROC_METRICS: tuple[tuple[str, str], ...] = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"))


def model_color(model: str) -> str:
    """The colour of a model (by label) in every figure."""
    return {"PatchCore": "#1f77b4", "EfficientAD": "#ff7f0e"}.get(model, "#7f7f7f")


def _model_order(table: pd.DataFrame) -> list[str]:
    """Model labels in the table: known models in their usual order, then any other A-Z."""
    models = [catalog.model_label(m) for m in catalog.MODEL_NAMES if catalog.model_label(m) in set(table["model"])]
    return models + [m for m in sorted(table["model"].unique()) if m not in models]


def _bar_values(table: pd.DataFrame, model: str, metric: str, categories: list[str]) -> tuple[list[float | None], list[float]]:
    """``model``'s ``metric`` per category then their average (None where missing), and the valid values."""
    sub = table[table["model"] == model].set_index("category")[metric]
    ys = [sub.get(c) if c in sub.index else None for c in categories]
    valid = [v for v in ys if v is not None and not (isinstance(v, float) and math.isnan(v))]
    ys.append(float(np.mean(valid)) if valid else None)
    return ys, valid


def _bar(model: str, metric: str, x_labels: list[str], ys: list[float | None], *, show_legend: bool) -> go.Bar:
    return go.Bar(
        name=model,
        x=x_labels,
        y=ys,
        marker_color=model_color(model),
        offsetgroup=model,
        legendgroup=model,
        showlegend=show_legend,
        text=[f"{v:.3f}" if v is not None else "" for v in ys],
        textposition="inside",
        insidetextanchor="end",
        textfont={"color": "white"},
        hovertemplate=f"{model}<br>%{{x}}: %{{y:.3f}}<extra>{metric}</extra>",
    )


def _add_metric_bars(
    fig: go.Figure, table: pd.DataFrame, models: list[str], categories: list[str], metric: str, col: int
) -> list[float]:
    """One bar per (model, category) and per model average in subplot ``col``; returns the values drawn."""
    x_labels = [*categories, "average"]
    drawn: list[float] = []
    for model in models:
        ys, valid = _bar_values(table, model, metric, categories)
        drawn += valid
        fig.add_trace(_bar(model, metric, x_labels, ys, show_legend=col == 1), row=1, col=col)
    return drawn


def _published_refs(model: str, field: str, categories: list[str]) -> list[tuple[str, Mapping[str, Any]]]:
    """(category, published figure) of ``model`` (a label) that give ``field`` for a shown category."""
    return [
        (category, ref)
        for (m, category), ref in comparison.published_figures().items()
        if catalog.model_label(m) == model and category in categories and field in ref
    ]


def _published_marker(model: str, field: str, refs: list[tuple[str, Mapping[str, Any]]], *, show_legend: bool) -> go.Scatter:
    return go.Scatter(
        name="published figure",
        x=[c for c, _ in refs],
        y=[ref[field] for _, ref in refs],
        mode="markers",
        marker={"symbol": "diamond", "size": 11, "color": "black", "line": {"color": "white", "width": 1}},
        # Same offset group as the model's bars: the diamond sits on the bar it refers to.
        offsetgroup=model,
        legendgroup="published",
        showlegend=show_legend,
        hovertext=[f"published figure: {model} {ref[field]:.3f}<br>{ref['source']}" for _, ref in refs],
        hoverinfo="text",
    )


def _add_published_markers(fig: go.Figure, models: list[str], categories: list[str], field: str, col: int) -> None:
    """Black diamonds ("published figure") on the bars a published reference exists for."""
    shown_legend = False
    for model in models:
        refs = _published_refs(model, field, categories)
        if not refs:
            continue
        fig.add_trace(_published_marker(model, field, refs, show_legend=col == 1 and not shown_legend), row=1, col=col)
        shown_legend = True


def _y_floor(values: list[float]) -> float:
    """The bottom of the AUROC axis: the lowest value rounded down to 0.1, between 0 and 0.5."""
    low = min(values) if values else 0.5
    return max(0.0, min(0.5, math.floor(low * 10) / 10))


def auroc_bar_figure(results: dict[str, Any]) -> go.Figure:
    """Grouped bars of image and pixel AUROC per category and model, with each model's average.

    Published reference figures (where we have them) are drawn as black diamonds named
    "published figure" in the legend and hover text.
    """
    table = comparison.results_table(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Image AUROC", "Pixel AUROC"), horizontal_spacing=0.08)
    if table.empty:
        return fig
    categories = sorted(table["category"].unique())
    models = _model_order(table)
    drawn: list[float] = []
    for col, (metric, field) in enumerate(AUROC_METRICS, start=1):
        drawn += _add_metric_bars(fig, table, models, categories, metric, col)
        _add_published_markers(fig, models, categories, field, col)
    fig.update_yaxes(range=[_y_floor(drawn), 1.06])
    fig.update_layout(
        barmode="group", scattermode="group", height=420, margin={"t": 40, "b": 20, "l": 20, "r": 20}, legend_title_text=""
    )
    return fig


def roc_figure(results: dict[str, Any], category: str) -> go.Figure:
    """ROC curves (image level) of every model evaluated on ``category``."""
    fig = go.Figure()
    for model, cat, entry in comparison.model_entries(results):
        if cat != category:
            continue
        roc = entry.get("roc") or {}
        fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
        if not fpr or len(fpr) != len(tpr):
            continue
        name = catalog.model_label(model)
        auroc = comparison.finite_number(entry.get("image_auroc"))
        fig.add_trace(
            go.Scatter(
                x=fpr,
                y=tpr,
                mode="lines",
                name=f"{name} (AUROC {auroc:.3f})" if auroc is not None else name,
                line={"color": model_color(name), "width": 2, "shape": "hv"},
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "#aaaaaa", "dash": "dot"}))
    fig.update_layout(
        xaxis_title="false positive rate (good parts flagged)",
        yaxis_title="true positive rate (defects caught)",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1.02]},
        height=420,
        margin={"t": 30, "b": 20, "l": 20, "r": 20},
    )
    return fig


def validation_curve_figure(curves: Mapping[str, list[dict[str, Any]]]) -> go.Figure:
    """Validation image AUROC and loss against training steps, one line per model/category.

    The validation split is anomalib's synthetic one (held-out training images, half with
    synthetic defects), never the test set; a training in progress is drawn dashed.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation image AUROC", "Validation loss"), horizontal_spacing=0.08)
    palette = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
    for i, (name, curve) in enumerate(sorted(curves.items())):
        steps = [p.get("step") for p in curve]
        line = {"color": palette[i % len(palette)], "width": 2, "dash": "dash" if name.endswith("(training)") else "solid"}
        for col, field in ((1, "image_auroc"), (2, "loss")):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=[p.get(field) for p in curve],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line=line,
                    hovertemplate=f"{name}<br>step %{{x}}: %{{y:.4f}}<extra>{field}</extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="training step")
    fig.update_layout(height=380, margin={"t": 40, "b": 20, "l": 20, "r": 20}, legend_title_text="")
    return fig
