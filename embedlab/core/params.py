"""Typed, validated view of ``params.yaml``.

Every stage loads the whole file through :func:`load_params` before doing any work, so a typo anywhere stops the
pipeline at once with one line naming the key and what it accepts. Stages then read only their own section; DVC
tracks exactly those keys (see ``dvc.yaml``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from embedlab.core.backbones import BACKBONES, BackboneName
from embedlab.core.layout import STACK
from embedlab.core.schema import (  # the sections, re-exported: callers import every params type from here
    SMALLNET_OPTIONS,
    AugmentParams,
    BackboneOverrides,
    ClusterParams,
    DataParams,
    EmbedParams,
    EvaluateParams,
    FaissParams,
    ModelParams,
    ParamsError,
    ProjectorParams,
    ServeParams,
    StackParams,
    TrainParams,
    TsneParams,
    _Section,
)

__all__ = [
    "AugmentParams",
    "BackboneOverrides",
    "ClusterParams",
    "DataParams",
    "EmbedParams",
    "EvaluateParams",
    "FaissParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "ProjectorParams",
    "ServeParams",
    "StackParams",
    "TrainParams",
    "TsneParams",
    "load_params",
    "parse_params",
]


class Params(_Section):
    """The whole of ``params.yaml``."""

    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    backbones: dict[BackboneName, BackboneOverrides | None] = Field(
        default_factory=lambda: {"densenet121": None, "resnet50": None, "vgg16": None}, min_length=1
    )
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    embed: EmbedParams = EmbedParams()
    evaluate: EvaluateParams = EvaluateParams()
    stack: StackParams = StackParams()
    cluster: ClusterParams = ClusterParams()
    projector: ProjectorParams = ProjectorParams()
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _check_overrides(self) -> Params:
        for name in self.backbones:  # an override that breaks a cross-key rule fails here, before any stage works
            self.for_backbone(name)
        for name in self.stack.models or []:
            if name not in self.backbones:
                raise ValueError(f"stack.models: {name!r} is not in backbones ({', '.join(self.backbones)})")
        return self

    @property
    def stacked_backbones(self) -> list[str]:
        """The backbones the stack combines, in ``backbones`` order."""
        chosen = self.stack.models or list(self.backbones)
        return [name for name in self.backbones if name in chosen]

    @property
    def model_names(self) -> list[str]:
        """Every model evaluate and cluster report: the backbones, then ``stack``."""
        return [*self.backbones, STACK]

    def for_backbone(self, name: str) -> tuple[ModelParams, TrainParams]:
        """``model`` and ``train`` with this backbone's overrides applied (and validated again)."""
        if name not in self.backbones:
            raise ParamsError(f"params.yaml: backbones: {name!r} is not listed (listed: {', '.join(self.backbones)})")
        overrides = (self.backbones[name] or BackboneOverrides()).model_dump(exclude_unset=True)
        model_keys = set(ModelParams.model_fields)
        try:
            model = ModelParams.model_validate(
                {**self.model.model_dump(), **{k: v for k, v in overrides.items() if k in model_keys}}
            )
            train = TrainParams.model_validate(
                {**self.train.model_dump(), **{k: v for k, v in overrides.items() if k not in model_keys}}
            )
        except ValidationError as err:
            raise ParamsError(_format_error(err, prefix=f"backbones.{name}")) from None
        spec = BACKBONES[name]
        for key, what in SMALLNET_OPTIONS.items():
            if getattr(model, key) != ModelParams.model_fields[key].default and not spec.smallnet_options:
                where = f"backbones.{name}.{key}" if key in overrides else f"model.{key}"
                having = ", ".join(sorted(n for n, s in BACKBONES.items() if s.smallnet_options))
                raise ParamsError(
                    f"params.yaml: {where}: {name} has no {what}; only {having} has (set it under backbones.smallnet)"
                )
        if model.weights == "imagenet" and not spec.imagenet_weights:
            where = f"backbones.{name}.weights" if "weights" in overrides else "model.weights"
            raise ParamsError(
                f"params.yaml: {where}: {name} has no ImageNet weights; use null (random init) or a .weights.h5 path"
            )
        return model, train


def _format_error(err: ValidationError, prefix: str = "") -> str:
    """The first validation error as one line: ``params.yaml: <dotted key>: <what it accepts> (got <value>)``."""
    first = err.errors()[0]
    loc = ".".join([prefix, *(str(part) for part in first["loc"])] if prefix else [str(p) for p in first["loc"]])
    msg = first["msg"]
    if msg.startswith("Value error, "):
        # Cross-field checks put the key first: "path: required when ...".
        key, _, rest = msg.removeprefix("Value error, ").partition(": ")
        loc, msg = ".".join(filter(None, [loc, key])), rest
    elif first["loc"][-1] == "[key]":
        loc = loc.removesuffix(".[key]")
        msg = msg.replace("Input should be", "unknown name; allowed:") + f" (got {first['input']!r})"
    elif first["type"] == "extra_forbidden":
        msg = f"unknown key; allowed keys: {', '.join(_allowed_keys(first['loc']))}"
    else:
        got = first.get("input")
        msg = f"{msg} (got {got!r})"
    more = len(err.errors()) - 1
    return f"params.yaml: {loc}: {msg}" + (f" [+{more} more]" if more else "")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section that ``loc`` points into (for "unknown key" messages)."""
    if loc[0] == "backbones":
        return list(BackboneOverrides.model_fields)
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise :class:`ParamsError` with one line naming the bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err)) from None


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e-4`` (no dot) is a string; YAML 1.2, which DVC and most editors speak,
    reads it as a number. Params are validated strictly (a quoted ``"48"`` stays text), so read it as 1.2 does."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Floats)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)
