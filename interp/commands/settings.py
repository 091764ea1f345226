"""Study commands' settings: ``--config FILE`` (TOML), flags on top, ``--print-config``.

Every study task declares its flags with a default of None ("not given"), so a flag the user
typed overrides the file and one they did not leaves the file's value (or the config's default).
Flag values go through the same ``interp.validate`` specs as the file's keys (derived from the
config's field annotations in ``interp.studies.config_file``), so both are refused alike.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from interp.validate import Optional, Spec, Text

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from interp.model.loading import ModelCfg

C = TypeVar("C", bound="DataclassInstance")

HELP = {
    "config": "TOML file with [model] and [<study>] tables, shared parts nested ([layers.heal], [weights.calib], ...; "
              "every setting; write one with --print-config); flags given with it override the file",
    "print_config": "print the effective settings as TOML and stop (running with that file is the same run)",
    "model": "smollm2-135m-instruct (embedded default), gemma-3-270m, a local model directory, a .gguf file or a hub id",
    "dtype": "float32 (default), bfloat16 or float16",
    "device": "cpu (default), cuda, cuda:1, ...",
}
MODEL_FLAGS = {"model": "spec", "revision": "revision", "dtype": "dtype", "device": "device",
               "device_map": "device_map"}
"""Command flag -> ModelCfg field."""


@dataclass(frozen=True)
class FieldSpec:
    """The validate spec of field ``name`` of the config class at ``where`` ('module:Class'), imported on
    first use: the study configs import torch, and ``invoke --list`` should not wait for it."""

    where: str
    name: str

    def resolve(self) -> Spec[object]:
        """The field's own spec (from the config class's annotation)."""
        from interp.studies.config_file import fields_of

        module, _, cls = self.where.partition(":")
        return Optional(fields_of(getattr(importlib.import_module(module), cls))[self.name])

    def parse(self, value: object, flag: str) -> object:
        return self.resolve().parse(value, flag)


def flag_types(where: str, *names: str, **extra: Spec[object]) -> dict[str, Spec[object]]:
    """CliTask ``types`` for study flags named like the fields of the config class at ``where``
    ('module:Class'; None: not given), the model flags, and ``extra``."""
    return {**{n: FieldSpec(where, n) for n in names}, **{n: Optional(Text()) for n in MODEL_FLAGS}, **extra}


def resolve(study: str, cls: type[C], values: dict[str, Any], names: tuple[str, ...],
            **renamed: object) -> tuple[ModelCfg, C] | None:
    """(ModelCfg, study config) from a task's flag ``values`` (its ``locals()``: config, print_config, quick,
    the model flags and the study flags ``names``; ``renamed`` maps a field to its value under another flag
    name); None after --print-config has printed them."""
    from interp.studies.config_file import dumps, load

    flags = {**{k: values[k] for k in names}, **renamed}
    if values.get("quick"):
        if flags.get("budget") not in (None, "quick"):
            raise ValueError(f"--quick and --budget {flags['budget']} disagree: pass one of them")
        flags["budget"] = "quick"
    model_cfg, cfg = load(study, cls, values["config"], flags, {MODEL_FLAGS[k]: values[k] for k in MODEL_FLAGS},
                          defaults={"budget": "full"})  # every study task runs the full study unless told
    if values["print_config"]:
        print(dumps(study, model_cfg, cfg), end="")
        return None
    return model_cfg, cfg
