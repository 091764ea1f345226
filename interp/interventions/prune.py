"""``PruneSpec``: magnitude or Wanda pruning of chosen projections, as a reversible value.

    spec = PruneSpec("wanda", {"attn": 0.2, "mlp": 0.6})
    with spec.apply(loaded) as report:     # weights pruned in place
        evaluate(...)
    # weights restored bit for bit

``report`` (``interp.interventions.pruning.apply.PruneReport``) has the sparsity reached per module and
overall and the number of weights removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, cast

from interp.interventions import register
from interp.interventions.pruning.calibdata import CalibData
from interp.interventions.pruning.masks import MaskError, n_remove, parse_nm
from interp.interventions.pruning.targets import check_selector

if TYPE_CHECKING:
    from interp.interventions.pruning.apply import PruneReport
    from interp.interventions.pruning.norms import NormSource
    from interp.model.loading import Loaded

METHODS = ("magnitude", "wanda")
GROUPING = ("row", "matrix", "global")
CALIBRATION = ("sequential", "oneshot")


class PruneSpecError(ValueError):
    """A pruning spec that does not make sense; the message says how to fix it."""


def _pct(rate: float) -> str:
    return f"{rate * 100:.4g}%"


@register
@dataclass(frozen=True)
class PruneSpec:
    """Zero the lowest-scoring weights of the selected projections of every layer."""

    kind: ClassVar[str] = "prune"

    method: str = "magnitude"
    """'magnitude' (score |W|) or 'wanda' (score |W_ij| * ||X_j||_2 from calibration inputs)."""
    rate: float | tuple[tuple[str, float], ...] | None = 0.5
    """Fraction of weights removed from each selected module, or per-selector rates given as a
    dict / pairs such as {"attn": 0.2, "mlp": 0.6}. None with N:M (the structure fixes it)."""
    modules: tuple[str, ...] = ("all",)
    """Selectors a single rate applies to: q, k, v, o, gate, up, down, qkv (q, k and v), attn, mlp, all.
    Taken from the keys when ``rate`` is per selector."""
    structure: str = "unstructured"
    """'unstructured' or semi-structured 'N:M': keep N of every M consecutive inputs of a row."""
    group: str = "row"
    """Comparison group: 'row' (each output row, Wanda's default), 'matrix' (each module) or
    'global' (all selected modules pooled; modules that share a rate share one threshold)."""
    calibration: str | None = "sequential"
    """Wanda only: 'sequential' (norms of block l taken after blocks < l are pruned, as in the
    paper) or 'oneshot' (all norms from the dense model). None for magnitude."""
    calib: CalibData | None = field(default_factory=CalibData)
    """Wanda only: the calibration set. None for magnitude."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PruneSpecError(f"unknown pruning method '{self.method}': use {' or '.join(METHODS)}")
        if self.group not in GROUPING:
            raise PruneSpecError(f"unknown comparison group '{self.group}': use row, matrix or global")
        try:
            nm = parse_nm(self.structure)
        except MaskError as e:
            raise PruneSpecError(str(e)) from None
        rate, modules = self.rate, self.modules
        modules = (modules,) if isinstance(modules, str) else tuple(modules)
        if isinstance(rate, (dict, list, tuple)):
            pairs = tuple((str(k), v) for k, v in (rate.items() if isinstance(rate, dict) else rate))
            if not pairs:
                raise PruneSpecError("no modules given a rate: pass e.g. {'attn': 0.2, 'mlp': 0.6}")
            if modules not in (("all",), tuple(k for k, _ in pairs)):
                raise PruneSpecError("give either one rate with modules=..., or per-module rates, not both")
            modules = tuple(k for k, _ in pairs)
            rates: list[float | None] = [v for _, v in pairs]
        else:
            pairs, rates = None, [rate]
        if not modules:
            raise PruneSpecError("no modules selected: use q, k, v, o, gate, up, down, attn, mlp or all")
        if len(set(modules)) != len(modules):
            raise PruneSpecError(f"module selected twice in {','.join(modules)}")
        for m in modules:
            try:
                check_selector(m)
            except ValueError as e:
                raise PruneSpecError(str(e)) from None
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if any(r is not None and abs(float(r) - implied) > 1e-9 for r in rates):
                raise PruneSpecError(f"structure {self.structure} removes exactly {_pct(implied)} of each module: "
                                     "leave the rate out (None) or pass that rate")
            pairs, rate = None, implied
        else:
            for r in rates:
                if r is None or isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
                    raise PruneSpecError(f"pruning rate must be a number in [0, 1] (0.5 = 50%), got {r!r}")
            if pairs is not None:
                pairs = tuple((k, float(v)) for k, v in pairs)
            else:
                rate = float(cast(float, rate))  # checked above: a number
        if nm is not None and self.group != "row":
            raise PruneSpecError(f"N:M structure {self.structure} compares weights within groups of a row: "
                                 "use group='row'")
        calibration, calib = self.calibration, self.calib
        if self.method == "magnitude":
            calibration, calib = None, None
        else:
            if calibration not in CALIBRATION:
                raise PruneSpecError(f"unknown Wanda calibration '{calibration}': use sequential or oneshot")
            if isinstance(calib, dict):
                calib = CalibData.from_dict(calib)
            if not isinstance(calib, CalibData):
                raise PruneSpecError("Wanda needs a calibration set (calib=CalibData(...))")
            if calibration == "sequential" and self.group == "global":
                raise PruneSpecError("a global threshold needs every score at once, but sequential Wanda prunes "
                                     "block by block: use calibration='oneshot' with group='global'")
        object.__setattr__(self, "rate", pairs if pairs is not None else rate)
        object.__setattr__(self, "modules", modules)
        object.__setattr__(self, "calibration", calibration)
        object.__setattr__(self, "calib", calib)

    @property
    def rates(self) -> tuple[tuple[str, float], ...]:
        """(selector, rate) pairs."""
        if isinstance(self.rate, tuple):
            return self.rate
        return tuple((m, cast(float, self.rate)) for m in self.modules)  # one rate: a number after __post_init__

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.structure)

    @property
    def is_noop(self) -> bool:
        return self.nm is None and all(n_remove(r, 1 << 30) == 0 for _, r in self.rates)

    @classmethod
    def from_dict(cls, d: dict) -> PruneSpec:
        d = dict(d)
        if isinstance(d.get("rate"), list):
            d["rate"] = tuple(tuple(p) for p in d["rate"])
        d["modules"] = tuple(d.get("modules", ("all",)))
        if isinstance(d.get("calib"), dict):
            d["calib"] = CalibData.from_dict(d["calib"])
        return cls(**d)

    def label(self) -> str:
        """e.g. 'magnitude all=50%', 'wanda attn=20%,mlp=60%', 'wanda-oneshot all 2:4', '... global'."""
        name = self.method + ("-oneshot" if self.calibration == "oneshot" else "")
        if self.nm is not None:
            what = f"{','.join(self.modules)} {self.structure}"
        else:
            what = ",".join(f"{m}={_pct(r)}" for m, r in self.rates)
        return f"{name} {what}" + ("" if self.group == "row" else f" {self.group}")

    @contextlib.contextmanager
    def apply(self, loaded: Loaded, norms: NormSource | None = None) -> Iterator[PruneReport]:
        """Prune in place; yields the ``PruneReport``; restores every weight exactly on exit.
        ``norms``: where Wanda norms computed before are found, and computed ones are kept
        (``interp.interventions.pruning.norms``); None computes them on every apply."""
        from interp.interventions.pruning.apply import pruned

        with pruned(loaded, self, norms=norms) as report:
            yield report
