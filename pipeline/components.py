"""Component specs: what a plugin registers for a stage, and the produce/consume check.

A component is registered by name for one stage, together with its config class
(a pydantic model whose field descriptions become help text) and a factory. The
factory may be given as a ``"module:attr"`` string so that listing plugins never
imports torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from pydantic import BaseModel, ConfigDict

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


class ComponentConfig(BaseModel):
    """Base class of every component's options: unknown keys are errors."""

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
    """

    stage: str
    name: str
    factory: Factory
    config: Any = ComponentConfig
    produces: frozenset[str] = frozenset()
    consumes: tuple[frozenset[str], ...] = ()
    description: str = ""
    plugin: str = ""

    def _where(self) -> str:
        return f"{self.stage} {self.name!r} of plugin {self.plugin or '?'}"

    def config_class(self) -> type[ComponentConfig]:
        """The config class, loaded first when given as ``"module:attr"``."""
        return load_object(self.config, f"the config class of {self._where()}")

    def build(self, options: ComponentConfig, ctx: Any = None) -> Any:
        """``factory(options, ctx)``; an exception of the factory's own (not an :class:`NLSError`)
        becomes a :class:`PluginError` naming this component."""
        from pipeline.types import plugin_errors

        factory = load_object(self.factory, f"the factory of {self._where()}")
        with plugin_errors(f"{self._where()} failed while being built"):
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
                 produces=(), consumes=(), description: str = "") -> None:
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"plugin {self.plugin!r}: component name {name!r} must be letters, digits, _ or -")
        alts = tuple(frozenset([c]) if isinstance(c, str) else frozenset(c) for c in consumes)
        self.collected.append(Component(self.stage, name, factory, config, frozenset(produces), alts,
                                        description, self.plugin))


def describe(components: list[Component], stage: Optional[str] = None) -> str:
    """Human list ``name (plugin)`` of the components of a stage, for error messages."""
    items = [c for c in components if stage is None or c.stage == stage]
    if not items:
        return "none registered"
    return ", ".join(f"{c.name} (plugin {c.plugin})" for c in sorted(items, key=lambda c: c.name))
