"""Component specs: what a plugin registers for a stage, and the produce/consume check.

A component is registered by name for one stage, together with its config class
(a pydantic model whose field descriptions become help text) and a factory. The
factory may be given as a ``"module:attr"`` string so that listing plugins never
imports torch.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pipeline.types import PluginError

#: Stages in pipeline order. ``losses`` and ``evaluators`` may hold several components.
STAGES: tuple[str, ...] = (
    "scene",
    "field",
    "certifier",
    "density",
    "renderer",
    "extractor",
    "loss",
    "evaluator",
)

#: The quantities the built-in components produce and consume (plugins may add their own names).
QUANTITIES: tuple[str, ...] = (
    "images",  # posed images (scene sources)
    "points",  # point cloud (scene sources)
    "gt_mesh",  # ground-truth geometry available (scene sources)
    "sdf",
    "occupancy",
    "density",
    "rgb",
    "depth",
    "normals",
    "mesh",
    "render",  # a renderer's image outputs (rgb, opacity, depth per ray)
    "voxels",  # the field exposes voxel grids (for grid regularisers)
)


#: Why a boolean is refused for a number: YAML's booleans are words a user may have meant otherwise.
BOOL_HINT = "YAML reads yes/no/on/off/true/false as booleans"


def _takes_bool(ann: Any) -> bool:
    """Whether a field annotated ``ann`` means to accept a boolean (bool, Any, a Literal of booleans)."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _takes_bool(get_args(ann)[0])
    if origin in (Union, types.UnionType):
        return any(_takes_bool(m) for m in get_args(ann))
    if origin is Literal:
        return any(isinstance(a, bool) for a in get_args(ann))
    return ann in (bool, Any, object)


def _number_kind(ann: Any) -> Optional[str]:
    """'an integer' or 'a number' when ``ann`` (or a member of its union) is int or float, else None."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _number_kind(get_args(ann)[0])
    if origin in (Union, types.UnionType):
        kinds = [k for k in map(_number_kind, get_args(ann)) if k]
        return "a number" if "a number" in kinds else (kinds[0] if kinds else None)
    if origin is Literal:
        values = get_args(ann)
        return "an integer" if any(isinstance(a, int) for a in values) else \
            "a number" if any(isinstance(a, float) for a in values) else None
    if ann is float:
        return "a number"
    if isinstance(ann, type) and issubclass(ann, int) and ann is not bool:
        return "an integer"
    return None


def bool_for_number(ann: Any, value: Any) -> Optional[str]:
    """What ``value`` should have been where it holds a boolean that a field annotated ``ann`` would
    silently take as a number (``True`` -> 1), e.g. ``"an integer, not a boolean"``; None when it does not.
    Lists, tuples and dicts of numbers are searched item by item (``"a number, not a boolean, at item 2"``)."""
    origin = get_origin(ann)
    if origin is Annotated:
        return bool_for_number(get_args(ann)[0], value)
    if isinstance(value, bool):
        if _takes_bool(ann):
            return None
        kind = _number_kind(ann)
        return f"{kind}, not a boolean" if kind else None
    if origin in (Union, types.UnionType):
        return next((p for p in (bool_for_number(m, value) for m in get_args(ann)) if p), None)
    args = get_args(ann)
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset, Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            items = list(zip(args, value))
        else:
            items = [(args[0] if args else Any, v) for v in value]
        where = enumerate(items)
    elif isinstance(value, dict) and origin is dict and len(args) == 2:
        where = ((k, (args[1], v)) for k, v in value.items())
    else:
        return None
    for key, (item_ann, item) in where:
        problem = bool_for_number(item_ann, item)
        if problem:
            return f"{problem}, at item {key!r}" if ", at item" not in problem else problem
    return None


class ConfigModel(BaseModel):
    """Base class of every options block of a scene file (component options and the ``train:``,
    ``eval:`` and ``output:`` blocks): a boolean is never taken for a number. YAML reads ``yes``,
    ``on`` and ``true`` as True, which pydantic would otherwise turn into 1 for an ``int`` field;
    strings such as ``"5"`` and ints for ``float`` fields are still accepted as before."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        fld = cls.model_fields.get(info.field_name) if info.field_name else None
        problem = bool_for_number(fld.annotation, value) if fld is not None else None
        if problem:
            raise PydanticCustomError("bool_for_number", "expected {problem} ({hint})",
                                      {"problem": problem, "hint": BOOL_HINT})
        return value


class ComponentConfig(ConfigModel):
    """Base class of every component's options: unknown keys are errors, booleans are not numbers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # nan/inf: a typo


Factory = Union[str, Callable[..., Any]]


def load_object(ref: Factory, what: str = "") -> Any:
    """Resolve a ``"package.module:attr"`` reference (or return a callable unchanged). A reference
    that does not resolve raises :class:`PluginError` naming it and ``what`` refers to it."""
    if not isinstance(ref, str):
        return ref
    from pipeline.types import plugin_errors

    module, _, attr = ref.partition(":")
    with plugin_errors(f"{what or 'reference'} {ref!r} cannot be loaded"):  # ImportError, AttributeError, ...
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Component:
    """One named component for one stage.

    stage: one of :data:`STAGES`.
    name: the ``type:`` a scene file selects it by, unique per stage.
    factory: ``"module:attr"`` or callable; called as ``factory(config, ctx)``.
    config: pydantic model class (subclass of :class:`ComponentConfig`) or ``"module:attr"``.
    produces: quantities it makes available downstream.
    consumes: alternatives; the component fits if *all* quantities of *any one*
        alternative are available upstream. ``()`` means it needs nothing.
    description: one line for ``nls plugins``.
    plugin: name of the registering plugin (filled in by the host).
    metrics: an evaluator's ``(metric, note, better)``: what each metric it reports measures, in what unit, and
        whether higher or lower is better (None: as :func:`pipeline.report.collect.better` says by its name)
        (:mod:`pipeline.metric_notes`). A name ending in ``@`` covers every metric it starts (``fscore@0.01``).
    """

    stage: str
    name: str
    factory: Factory
    config: Any = ComponentConfig
    produces: frozenset[str] = frozenset()
    consumes: tuple[frozenset[str], ...] = ()
    description: str = ""
    plugin: str = ""
    metrics: tuple[tuple[str, str, Optional[str]], ...] = ()

    @property
    def label(self) -> str:
        """How messages name it: ``"density map 'laplace' of plugin ngp"``."""
        role = {"density": "density map", "scene": "scene source"}.get(self.stage, self.stage)
        return f"{role} {self.name!r} of plugin {self.plugin or '?'}"

    def config_class(self) -> type[ComponentConfig]:
        """The config class, loaded first when given as ``"module:attr"``; a PluginError when it is
        not a :class:`ComponentConfig` subclass."""
        cls = load_object(self.config, f"the config class of {self.label}")
        check_config_class(cls, self.label)
        return cls

    def build(self, options: ComponentConfig, ctx: Any = None) -> Any:
        """``factory(options, ctx)``; an exception of the factory's own (not an :class:`NLSError`)
        becomes a :class:`PluginError` naming this component."""
        from pipeline.types import plugin_errors

        factory = load_object(self.factory, f"the factory of {self.label}")
        with plugin_errors(f"{self.label} failed while being built"):
            return factory(options, ctx)

    def fits(self, available: set[str]) -> bool:
        """Whether ``available`` holds every quantity of one ``consumes`` alternative (always True when
        it consumes nothing)."""
        return not self.consumes or any(alt <= available for alt in self.consumes)

    def consumes_text(self) -> str:
        """``consumes`` for messages: ``a+b or c``, or ``nothing``."""
        if not self.consumes:
            return "nothing"
        return " or ".join("+".join(sorted(alt)) for alt in self.consumes)

    def as_dict(self) -> dict:
        """Plain data as ``nls plugins`` lists it: stage, name, plugin, description, produces,
        consumes and the config class as ``"module:qualname"``."""
        cfg = self.config if isinstance(self.config, str) else f"{self.config.__module__}:{self.config.__qualname__}"
        return {
            "stage": self.stage,
            "name": self.name,
            "plugin": self.plugin,
            "description": inspect.cleandoc(self.description),  # docstrings keep their indentation
            "produces": sorted(self.produces),
            "consumes": [sorted(a) for a in self.consumes],
            "config": cfg,
            **({"metrics": {name: note for name, note, _ in self.metrics}} if self.metrics else {}),
            **({"better": {name: b for name, _, b in self.metrics if b}} if any(b for *_, b in self.metrics) else {}),
        }


@dataclass
class Registrar:
    """The ``register`` callable handed to each ``nls_register_<stage>`` hook.

    Usage inside a plugin's ``nls_register_fields(register)``::

        register("dense_grid", "plugins.ngp.fields:build_dense_grid",
                 config=DenseGridConfig, produces={"density", "rgb"})
    """

    plugin: str
    stage: str
    collected: list[Component] = field(default_factory=list)

    def __call__(self, name: str, factory: Factory, *, config: Any = ComponentConfig,
                 produces=(), consumes=(), description: str = "", metrics: Optional[Mapping[str, Any]] = None) -> None:
        """Collect one component; a PluginError for an invalid name, a config that is not a
        :class:`ComponentConfig` subclass (a ``"module:attr"`` one is checked when loaded) or ``metrics``
        that is not a mapping of metric names to notes (evaluators only)."""
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"plugin {self.plugin!r}: {self.stage} component name {name!r} must be letters, "
                              f"digits, _ or -{_name_example(name)}")
        where = f"{self.stage} {name!r} of plugin {self.plugin}"
        if not isinstance(config, str):
            check_config_class(config, where, defaults=False)  # defaults: when a scene uses it (config_class)
        produces = {produces} if isinstance(produces, str) else produces  # "sdf" is one quantity, not s, d, f
        if isinstance(consumes, str):
            consumes = [consumes]
        elif isinstance(consumes, (set, frozenset)) and len(consumes) > 1:
            both = "+".join(sorted(map(str, consumes)))
            raise PluginError(f"{where}: consumes={set(consumes)!r} is ambiguous; consumes lists alternatives: "
                              f"consumes=[{set(consumes)!r}] needs {both}, consumes={sorted(consumes)!r} needs "
                              f"any one of them")
        alts = tuple(frozenset([c]) if isinstance(c, str) else frozenset(c) for c in consumes)
        self.collected.append(Component(self.stage, name, factory, config, frozenset(produces), alts,
                                        description, self.plugin, self._metrics(where, metrics)))

    def _metrics(self, where: str, metrics: Optional[Mapping[str, Any]]) -> tuple[tuple[str, str, Optional[str]], ...]:
        """``metrics`` as (name, note, better) triples; a PluginError unless it is None or maps each name to a
        non-empty note, or to ``{"note": ..., "better": "higher" or "lower"}``, given to an evaluator."""
        if metrics is None:
            return ()
        if self.stage != "evaluator":
            raise PluginError(f"{where}: metrics= describes what an evaluator reports; a {self.stage} has no metrics")
        entries = [(name, _metric_entry(value)) for name, value in metrics.items()] \
            if isinstance(metrics, Mapping) else [(None, None)]
        if any(not (isinstance(name, str) and name) or entry is None for name, entry in entries):
            raise PluginError(f"{where}: metrics= must map each metric name to a note on what it measures and in "
                              f"what unit, or to {{'note': ..., 'better': 'higher' or 'lower'}}, e.g. "
                              f"metrics={{'iou': 'intersection over union, 0..1'}}; got {metrics!r}")
        return tuple((name, *entry) for name, entry in entries)


def _metric_entry(value: Any) -> Optional[tuple[str, Optional[str]]]:
    """``(note, better)`` of one ``metrics=`` value, a note or ``{"note": ..., "better": ...}`` (whitespace in the
    note folded), or None when it is neither."""
    if isinstance(value, str):
        note, better = value, None
    elif isinstance(value, Mapping) and set(value) <= {"note", "better"}:
        note, better = value.get("note"), value.get("better")
    else:
        return None
    if not (isinstance(note, str) and note.strip()) or better not in (None, "higher", "lower"):
        return None
    return " ".join(note.split()), better


def check_config_class(config: Any, where: str, *, defaults: bool = True) -> None:
    """Raise a :class:`PluginError` naming ``where`` (``"loss 'x' of plugin p"``) unless ``config`` is a
    :class:`ComponentConfig` subclass whose defaults are valid options: a dataclass, a plain pydantic
    model, an option named ``type`` or a default its own field refuses would fail later, far away (a
    run that trains but cannot be reopened). ``defaults=False`` leaves the defaults to a later call
    (registration does, so start-up does not validate every component's defaults; a scene that uses
    the component checks them when its config is validated, before any training)."""
    if not (isinstance(config, type) and issubclass(config, ComponentConfig)):
        given = f"{config.__module__}:{config.__qualname__}" if isinstance(config, type) else repr(config)
        raise PluginError(f"{where}: config={given} must be a subclass of pipeline.components.ComponentConfig "
                          f"(a pydantic model whose fields are the options), or a 'module:attr' string naming one")
    if "type" in config.model_fields:
        raise PluginError(f"{where}: its config class {config.__qualname__} has an option named 'type', which is "
                          f"reserved (a scene file's `type:` selects the component); rename the option")
    if defaults and config not in _DEFAULTS_CHECKED:
        _check_defaults(config, where)
        _DEFAULTS_CHECKED.add(config)


#: config classes whose defaults passed :func:`_check_defaults` in this process
_DEFAULTS_CHECKED: set[type] = set()


def _check_defaults(config: type[ComponentConfig], where: str) -> None:
    """Each default of ``config``'s options passes its own field's type and bounds, is finite, and
    serialises to JSON (config.yaml records it); options without a default are left to the scene file.
    Fields are checked one by one, so model validators that relate several options are not run here."""
    import math
    import warnings

    from pydantic import TypeAdapter, ValidationError

    for name, f in config.model_fields.items():
        if f.is_required():
            continue
        value = f.get_default(call_default_factory=True)
        if isinstance(value, float) and not math.isfinite(value):
            raise PluginError(f"{where}: the default of option {name!r} of its config class {config.__qualname__} is "
                              f"{value!r}; options refuse nan and inf (a typo in a scene file): give a finite number")
        try:
            adapter = TypeAdapter(Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation)
            checked = adapter.validate_python(value)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # pydantic warns, not raises, on a value it cannot serialise
                adapter.dump_python(checked, mode="json")
        except ValidationError as exc:
            why = "; ".join(e["msg"] for e in exc.errors())
            raise PluginError(f"{where}: the default of option {name!r} of its config class {config.__qualname__}, "
                              f"{value!r}, is not a valid value of that option ({why}); fix the default") from None
        except Exception as exc:  # PydanticSerializationError, the serialisation warning raised above
            raise PluginError(f"{where}: the default of option {name!r} of its config class {config.__qualname__}, "
                              f"{value!r}, cannot be recorded in config.yaml ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}); give options plain values (numbers, strings, lists, "
                              f"mappings)") from None


def _name_example(name: Any) -> str:
    """`` (e.g. 'my_loss')`` for an invalid component name that has a valid form, else ''."""
    fixed = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") if isinstance(name, str) else ""
    return f" (e.g. {fixed!r})" if fixed else ""


def describe(components: list[Component], stage: Optional[str] = None) -> str:
    """Human list ``name (plugin)`` of the components of a stage, for error messages."""
    items = [c for c in components if stage is None or c.stage == stage]
    if not items:
        return "none registered"
    return ", ".join(f"{c.name} (plugin {c.plugin})" for c in sorted(items, key=lambda c: c.name))
