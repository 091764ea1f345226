"""A stored steering vector reused by a new safety run (``invoke safety --steer-from RUN:POINT``).

An activation-addition point's vector is its spec, stored in ``evals.intervention``; ``stored_steering``
rebuilds it from the store and names it by content, so the new run's config records where its steering
came from (run, point) and exactly what it was (the digest of direction, scale, layers, hook, positions).
"""

from __future__ import annotations

import hashlib

from interp.interventions import from_json
from interp.interventions.directions import ActivationAddition
from interp.provenance import canonical_json
from store import Store, StoreError
from store.evals import read_point
from store.runs import get_run


def vector_digest(spec: ActivationAddition) -> str:
    """sha256 of what the steering adds: direction, scale, layers, hook and positions (not alpha or name)."""
    vector = {"direction": list(spec.direction), "scale": spec.scale, "layers": list(spec.layers),
              "hook": spec.hook, "positions": spec.positions}
    return hashlib.sha256(canonical_json(vector).encode()).hexdigest()


def stored_steering(store: Store, ref: str) -> tuple[ActivationAddition, dict]:
    """(the stored point's ActivationAddition, its source {run, point, sha256}) for ``ref`` = 'RUN:POINT'; an
    unknown run or point, or a point of another kind, is one line naming the fix."""
    run, _, point = ref.partition(":")
    with store.connect(read_only=True) as con:
        try:
            get_run(con, int(run))
            spec_json, _ = read_point(con, int(run), point.strip())
        except (StoreError, KeyError) as e:
            raise ValueError(f"steer_from (--steer-from) {ref}: {e.args[0]}") from None
    spec = from_json(spec_json)
    if spec.kind != ActivationAddition.kind:
        raise ValueError(f"steer_from (--steer-from) {ref}: point '{point}' of run {run} is a {spec.kind} point, not "
                         "an activation addition: give an actadd[...] point")
    assert isinstance(spec, ActivationAddition)
    source = {"run": int(run), "point": point.strip(), "sha256": vector_digest(spec)}
    return ActivationAddition(spec.direction, layer=spec.layer, alpha=1.0, scale=spec.scale, hook=spec.hook,
                              name=f"run{run}:{spec.name}", more_layers=spec.more_layers,
                              positions=spec.positions), source
