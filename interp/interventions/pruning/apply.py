"""Prune a loaded model in place according to a ``PruneSpec`` and undo it exactly.

Each pruned module's weight is copied once before it is touched (only selected modules,
one module's scores alive at a time except for a global threshold) and copied back in
``finally``, so the model is bit-identical afterwards, also after an error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, cast

import pandas as pd
import torch
from torch import nn

from interp.interventions.pruning import masks
from interp.interventions.pruning.calibdata import calibration_windows
from interp.interventions.pruning.calibrate import Norms, layerwise_norms
from interp.interventions.pruning.targets import PROJECTIONS, Target, all_targets, resolve
from interp.provenance import canonical_json, config_hash
from store.weights import write_norms, write_prune_point

if TYPE_CHECKING:
    import duckdb

    from interp.interventions.prune import PruneSpec
    from interp.interventions.pruning.norms import NormSource
    from interp.model.loading import Loaded


class StatRow(TypedDict):
    """One pruned (layer, projection): a ``prune_stats`` row without its run and point."""

    layer: int
    module: str
    rate: float
    n_params: int
    n_pruned: int
    """Weights the mask removed."""
    n_zero: int
    """Zero weights after pruning (the mask's and any that were zero before)."""
    sparsity: float


@dataclass
class PruneReport:
    """What a spec did: one row per (layer, module) and the totals. A by-product of applying it
    (``save`` writes prune_points / prune_stats, and the Wanda norms when this apply computed them)."""

    rows: list[StatRow] = field(default_factory=list)
    """layer, module, rate, n_params, n_pruned (weights the mask removed), n_zero (zeros after), sparsity."""
    calib_id: str | None = None
    """Identity of the Wanda norms used (stored in input_norms), None for magnitude."""
    seconds: float = 0.0
    spec: PruneSpec | None = None
    """The applied ``PruneSpec``; None for the base model (nothing pruned)."""
    total_params: int = 0
    """Weights in every prunable projection of the model (the denominator of 'pruned fraction')."""
    norms: Norms | None = None
    """The Wanda norms this apply computed (None when they were found, or for magnitude): stored by ``save``."""
    norm_info: dict | None = None
    """mode, spec JSON (sequential), dataset, n_tokens, seconds of the computed norms."""
    model: tuple[str, str] = ("", "")
    """(name, revision) of the model, recorded with computed norms."""

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["layer", "module", "rate", "n_params", "n_pruned", "n_zero",
                                                "sparsity"])

    def by_module(self) -> pd.DataFrame:
        df = self.frame().groupby("module", sort=False)[["n_params", "n_pruned", "n_zero"]].sum().reset_index()
        df["sparsity"] = df["n_zero"] / df["n_params"]
        return df

    def totals(self) -> dict:
        n_params = sum(r["n_params"] for r in self.rows)
        n_zero = sum(r["n_zero"] for r in self.rows)
        return {"n_params": n_params, "n_pruned": sum(r["n_pruned"] for r in self.rows), "n_zero": n_zero,
                "sparsity": n_zero / n_params if n_params else 0.0}

    def point_row(self, run_id: int) -> dict:
        """The ``prune_points`` row (the base model's when ``spec`` is None)."""
        from interp.interventions import to_json

        tot, frame, spec = self.totals(), self.frame(), self.spec
        target = float((frame["rate"] * frame["n_params"]).sum() / tot["n_params"]) if tot["n_params"] else 0.0
        if spec is None:
            return {"run_id": run_id, "point": "base", "intervention": '{"kind":"base"}', "method": "base",
                    "calibration": None, "grp": "row", "structure": "unstructured", "modules": "all",
                    "target_rate": 0.0, **tot, "total_params": self.total_params, "calib_id": None,
                    "seconds": self.seconds}
        return {"run_id": run_id, "point": spec.label(), "intervention": to_json(spec), "method": spec.method,
                "calibration": spec.calibration, "grp": spec.group, "structure": spec.structure,
                "modules": ",".join(spec.modules), "target_rate": target, **tot, "total_params": self.total_params,
                "calib_id": self.calib_id, "seconds": self.seconds}

    def save(self, con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> None:
        """Computed norms (kept as stored when another run stored them first), then the point's rows."""
        if self.norms is not None and self.calib_id is not None:
            arrays = {k: v.detach().cpu().numpy() for k, v in self.norms.items()}
            write_norms(con, calib_id=self.calib_id, run_id=run_id, model=self.model[0], revision=self.model[1],
                        info=self.norm_info or {}, norms=arrays)
        write_prune_point(con, self.point_row(run_id), self.frame().assign(point=point))


def total_params(loaded: Loaded) -> int:
    """Weights in every prunable projection of the model."""
    return sum(t.n_params for t in all_targets(loaded.model, loaded.arch))


def calibration_id(loaded: Loaded, spec: PruneSpec) -> str:
    """Content identity of a set of Wanda norms: model, calibration data, mode, and for the
    sequential mode everything that decides which blocks were pruned before each measurement."""
    ident = {**loaded.describe(), "device": None, "calib": spec.calib, "mode": spec.calibration}
    if spec.calibration == "sequential":
        ident["spec"] = {"rates": spec.rates, "structure": spec.structure, "group": spec.group}
    return config_hash(ident)


class _Pruner:
    """Applies masks to targets, keeping a copy of each weight it changes."""

    def __init__(self, spec: PruneSpec) -> None:
        self.spec = spec
        self.saved: list[tuple[Target, torch.Tensor]] = []
        self.rows: list[StatRow] = []

    def prune(self, t: Target, mask: torch.Tensor) -> None:
        self.saved.append((t, t.weight.clone()))
        w = t.zero(mask)  # (out, in)
        n_zero = t.n_params - int(torch.count_nonzero(w))
        self.rows.append({"layer": t.layer, "module": t.name, "rate": t.rate, "n_params": t.n_params,
                          "n_pruned": int(torch.count_nonzero(mask)), "n_zero": n_zero, "sparsity": n_zero / t.n_params})

    def prune_each(self, targets: list[Target], score: Callable[[Target], torch.Tensor]) -> None:
        """Row, matrix or N:M grouping: every target on its own."""
        nm = self.spec.nm
        for t in targets:
            s = score(t)
            if nm is not None:
                mask = masks.nm_mask(s, *nm)
            elif self.spec.group == "row":
                mask = masks.row_mask(s, t.rate)
            else:
                mask = masks.matrix_mask(s, t.rate)
            self.prune(t, mask)

    def prune_global(self, targets: list[Target], score: Callable[[Target], torch.Tensor]) -> None:
        """One threshold per rate over all targets with that rate (scores written into one buffer)."""
        pools: dict[float, list[Target]] = {}
        for t in targets:
            pools.setdefault(t.rate, []).append(t)
        for rate, pool in pools.items():
            flat = torch.empty(sum(t.n_params for t in pool), dtype=torch.float32)
            start = 0
            for t in pool:
                flat[start:start + t.n_params] = score(t).reshape(-1).cpu()
                start += t.n_params
            mask = masks.lowest_k_mask(flat, masks.n_remove(rate, flat.numel()))
            del flat
            start = 0
            for t in pool:
                self.prune(t, mask[start:start + t.n_params].view(t.weight.shape))
                start += t.n_params

    def run(self, targets: list[Target], score: Callable[[Target], torch.Tensor]) -> None:
        (self.prune_global if self.spec.group == "global" else self.prune_each)(targets, score)

    def restore(self) -> None:
        for t, w in reversed(self.saved):
            t.write(w)
        self.saved.clear()


def _wanda_score(norms: Norms) -> Callable[[Target], torch.Tensor]:
    def score(t: Target) -> torch.Tensor:
        return masks.wanda_scores(t.weight, norms[(t.layer, t.name)])
    return score


def _norm_info(spec: PruneSpec, dataset: dict, n_tokens: int, seconds: float) -> dict:
    from interp.interventions import to_json

    return {"mode": spec.calibration, "spec": to_json(spec) if spec.calibration == "sequential" else None,
            "dataset": canonical_json(dataset), "n_tokens": n_tokens, "seconds": seconds}


def _wanda(loaded: Loaded, spec: PruneSpec, targets: list[Target], pruner: _Pruner, progress: bool,
           report: PruneReport, source: NormSource | None) -> None:
    """Prune with Wanda scores; norms found in ``source`` are used as they are, norms computed
    here go into the report (the sweep stores them) and into ``source`` for the applies after."""
    report.calib_id = calib_id = calibration_id(loaded, spec)
    norms = None if source is None else source.get_norms(calib_id)
    if norms is not None:  # stored: the masks follow from the weights and these norms alone
        pruner.run(targets, _wanda_score(norms))
        return
    t0 = time.perf_counter()
    assert spec.calib is not None  # a Wanda spec always has one (PruneSpec.__post_init__)
    windows, dataset = calibration_windows(loaded.tokenizer, spec.calib)
    blocks = cast(nn.ModuleList, loaded.model.get_submodule(loaded.arch.layers))
    if spec.calibration == "oneshot":  # every projection, so one calibration serves every spec
        norms = layerwise_norms(loaded.model, blocks, all_targets(loaded.model, loaded.arch), windows,
                                progress=progress)
        pruner.run(targets, _wanda_score(norms))
    else:
        by_layer: dict[int, list[Target]] = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)

        def prune_layer(layer: int, layer_norms: Norms) -> None:
            pruner.run(by_layer[layer], _wanda_score(layer_norms))

        norms = layerwise_norms(loaded.model, blocks, targets, windows, prune_layer, progress=progress)
    if source is not None:
        source.put_norms(calib_id, norms)
    report.norms, report.norm_info = norms, _norm_info(spec, dataset, spec.calib.n_tokens, time.perf_counter() - t0)


@contextlib.contextmanager
def pruned(loaded: Loaded, spec: PruneSpec, progress: bool = False, norms: NormSource | None = None) -> Iterator[PruneReport]:
    """Prune ``loaded.model`` in place as ``spec`` says; restore every weight exactly on exit.
    ``norms``: where Wanda norms computed before are found (None: computed here)."""
    t0 = time.perf_counter()
    targets = resolve(loaded.model, loaded.arch, spec.rates)
    pruner = _Pruner(spec)
    report = PruneReport(pruner.rows, spec=spec, total_params=total_params(loaded),
                         model=(loaded.name, loaded.revision))
    try:
        with torch.no_grad():
            if spec.method == "magnitude":
                pruner.run(targets, lambda t: masks.magnitude_scores(t.weight))
            else:
                _wanda(loaded, spec, targets, pruner, progress, report, norms)
        pruner.rows.sort(key=lambda r: (r["layer"], PROJECTIONS.index(r["module"])))
        report.seconds = time.perf_counter() - t0
        yield report
    finally:
        pruner.restore()


def dense_report(loaded: Loaded) -> PruneReport:
    """The report of pruning nothing: the base model's own zeros in every prunable projection."""
    rows: list[StatRow] = []
    for t in all_targets(loaded.model, loaded.arch):
        n_zero = t.n_params - int(torch.count_nonzero(t.weight))
        rows.append({"layer": t.layer, "module": t.name, "rate": 0.0, "n_params": t.n_params, "n_pruned": 0,
                     "n_zero": n_zero, "sparsity": n_zero / t.n_params})
    return PruneReport(rows, total_params=sum(r["n_params"] for r in rows))
