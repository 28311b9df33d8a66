"""The assembled model: field -> [certifier] -> [density map], plus renderer and loss terms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

from torch import Tensor, nn

from pipeline.types import PluginError, component_label, label_component, plugin_errors


class FieldChain(nn.Module):
    """Evaluates the geometry chain at points.

    ``forward(x (N,3), d (N,3) | None) -> dict`` with every quantity the chain produces
    (``sdf (N,)``, ``occupancy (N,)``, ``density (N,)``, ``rgb (N,3)`` when ``d`` is given).
    A certifier with ``wants_query = True`` is called as ``certifier(out, x=x, field=field)``;
    others as ``certifier(out)``.
    """

    def __init__(self, field: nn.Module, certifier: Optional[nn.Module] = None,
                 density_map: Optional[nn.Module] = None):
        super().__init__()
        self.field = field
        self.certifier = certifier
        self.density_map = density_map
        self._frame: Optional[Callable[[Tensor], tuple[Tensor, Tensor]]] = None

    def set_frame(self, frame: Optional[Callable[[Tensor], tuple[Tensor, Tensor]]]) -> None:
        """Query the field in a frame of its own: ``frame(x (N, 3)) -> (x' (N, 3), k)``, a uniform scaling by ``k``
        (a 0-d tensor) and a shift, which :class:`pipeline.focal_refinement.FocalRefinement` learns with the focal
        length. The chain then gives the field's outputs at ``x'``, its ``sdf`` divided by ``k`` and its ``density``
        multiplied by ``k`` (lengths in the field's frame are ``k`` times the world's), so everything outside it
        (renderers, extractors, evaluators) works in the world's frame. The frame's owner keeps its parameters
        (it is not a submodule here). None: the world's frame."""
        self._frame = frame

    def forward(self, x: Tensor, d: Optional[Tensor] = None) -> dict[str, Tensor]:
        """``x (N, 3)``, ``d (N, 3)`` or None -> the field's outputs, updated with the certifier's and
        then the density map's (in the world's frame: :meth:`set_frame`). A component that raises, or returns
        anything but a mapping with the shapes above, is a :class:`~pipeline.types.PluginError` naming it."""
        n = len(x)
        k = None
        if self._frame is not None:
            x, k = self._frame(x)
        out = self._chained(x, d, n)
        if k is not None:
            for key, power in (("sdf", -1), ("density", 1)):
                if key in out:
                    out[key] = out[key] * k ** power
        return out

    def _chained(self, x: Tensor, d: Optional[Tensor], n: int) -> dict[str, Tensor]:
        """The field's, the certifier's and the density map's outputs at ``x`` (the field's frame)."""
        out = dict(_called(self.field, n, x, d))
        if self.certifier is not None:
            # certifiers that smooth over space (rs_sdf) need the query points and the field itself
            extra = {"x": x, "field": self.field} if getattr(self.certifier, "wants_query", False) else {}
            out.update(_called(self.certifier, n, out, **extra))
        if self.density_map is not None:
            out.update(_called(self.density_map, n, out))
        return out

    def density_fn(self, x: Tensor) -> Tensor:
        """(S,3) -> (S,) volume density (occupancy-grid updates, visibility culling)."""
        return self(x, None)["density"]

    def radiance_fn(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """(S,3), (S,3) -> rgb (S,3), sigma (S,)."""
        out = self(x, d)
        return out["rgb"], out["density"]


#: the chain's quantities and their shape after the point dimension N
QUANTITY_SHAPES: dict[str, tuple[int, ...]] = {"sdf": (), "occupancy": (), "density": (), "rgb": (3,)}


def _called(component: nn.Module, n: int, *args, **kwargs) -> dict:
    """``component(*args, **kwargs)`` for ``n`` points, its result checked: a mapping whose
    :data:`QUANTITY_SHAPES` entries have shape ``(n, ...)``. Raises PluginError naming the component."""
    with plugin_errors(f"{component_label(component)} failed on {n} points"):
        out = component(*args, **kwargs)
    if not isinstance(out, Mapping):
        raise PluginError(f"{component_label(component)} returned {type(out).__name__}, not a mapping of "
                          f"quantities; return e.g. {{'sdf': (N,), 'rgb': (N, 3)}} for N points")
    for key, tail in QUANTITY_SHAPES.items():
        value = out.get(key)
        if value is not None and (not isinstance(value, Tensor) or tuple(value.shape) != (n, *tail)):
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise PluginError(f"{component_label(component)} returned {key!r} as {got} for {n} points; "
                              f"{key!r} is a tensor of shape {(('N',) + tail)!r}".replace("'N'", "N"))
    return out


#: what every renderer returns, and each entry's last dimension (render_rays: (R, C); render_image: (H, W, C))
RENDER_OUTPUTS: dict[str, int] = {"rgb": 3, "opacity": 1, "depth": 1}


def check_render_output(out, renderer, call: str, lead: Optional[tuple[int, ...]] = None) -> dict:
    """``out`` of ``renderer.<call>(...)``, checked to be a mapping with :data:`RENDER_OUTPUTS` of the same
    leading shape (``lead`` when given, e.g. ``(R,)`` rays); a PluginError naming the renderer otherwise, so a
    loss or evaluator that reads them is not blamed."""
    who = component_label(renderer)
    if not isinstance(out, Mapping):
        raise PluginError(f"{who}: {call} returned {type(out).__name__}, not a mapping with "
                          f"{', '.join(RENDER_OUTPUTS)}")
    for key, channels in RENDER_OUTPUTS.items():
        value = out.get(key)
        want = (*lead, channels) if lead is not None else None
        if not isinstance(value, Tensor) or value.shape[-1:] != (channels,) or (want and tuple(value.shape) != want):
            got = "nothing" if value is None else f"shape {tuple(value.shape)}" if isinstance(value, Tensor) \
                else type(value).__name__
            shape = ", ".join(map(str, want)) if want else f"..., {channels}"
            raise PluginError(f"{who}: {call} returned {key!r} as {got}; a renderer returns {key!r} of shape "
                              f"({shape}) (see `nls plugins --hook nls_register_renderers`)")
        lead = tuple(value.shape[:-1]) if lead is None else lead
    return out


class CallableStage(nn.Module):
    """A plain function used as a chain stage (no parameters, no state): ``forward`` calls it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.wants_query = bool(getattr(fn, "wants_query", False))  # a certifier function's call form

    def forward(self, *args, **kwargs):
        """``fn(*args, **kwargs)``."""
        return self.fn(*args, **kwargs)


def as_module(built, label: Optional[str] = None):
    """A built chain stage or loss as an ``nn.Module``: modules as they are, a plain callable wrapped in a
    :class:`CallableStage`, None as None; anything else is a PluginError naming the component (``label``,
    e.g. ``"loss 'x' of plugin p"``; else the label the build gave it)."""
    if built is None or isinstance(built, nn.Module):
        return built
    who = label or component_label(built)
    if not callable(built):
        raise PluginError(f"{who}: its factory returned {type(built).__name__}; fields, certifiers, density "
                          f"maps and losses are torch.nn.Modules (or plain callables)")
    module = CallableStage(built)
    label_component(module, who)
    return module


class System(nn.Module):
    """Everything trainable or stateful of a run, so one ``state_dict`` checkpoints it all. The optional parts
    per training image: ``exposure`` (:class:`pipeline.exposure.ImageExposure`), their colour transforms, and
    ``poses`` (:class:`pipeline.pose_refinement.PoseRefinement`), their cameras' pose corrections."""

    def __init__(self, chain: FieldChain, renderer: Optional[nn.Module], losses: dict[str, nn.Module],
                 aabb: Tensor, exposure: Optional[nn.Module] = None, poses: Optional[nn.Module] = None):
        super().__init__()
        self.chain = chain
        self.renderer = renderer
        self.losses = nn.ModuleDict(losses)
        self.exposure = exposure
        self.poses = poses
        self.register_buffer("aabb", aabb.float().clone())

    def held(self, state: Mapping[str, Tensor]) -> dict:
        """The entries of a checkpoint's model ``state`` for the parts this system has: without losses (a run
        opened to render, export or evaluate) their entries are left out, and without exposure transforms or
        pose corrections (its scene has no training split loaded) theirs."""
        dropped = tuple(p for p, part in (("losses.", len(self.losses)), ("exposure.", self.exposure),
                                          ("poses.", self.poses)) if not part)
        return {k: v for k, v in state.items() if not k.startswith(dropped)}

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: components may define ``param_groups(lr)`` for per-part rates."""
        groups: list[dict] = []
        seen: set[int] = set()
        roles = [("field", self.chain.field), ("certifier", self.chain.certifier),
                 ("density_map", self.chain.density_map), ("renderer", self.renderer),
                 *((f"loss.{k}", v) for k, v in self.losses.items()), ("exposure", self.exposure), ("poses", self.poses)]
        for role, module in roles:
            if module is None:
                continue
            if hasattr(module, "param_groups"):
                gs = module.param_groups(lr)
            else:
                gs = [{"params": list(module.parameters()), "lr": lr}]
            for g in gs:
                params = [p for p in g["params"] if p.requires_grad and id(p) not in seen]
                seen.update(id(p) for p in params)
                if params:
                    groups.append({"name": role, **g, "params": params})
        return groups
