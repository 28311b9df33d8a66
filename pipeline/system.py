"""The assembled model: field -> [certifier] -> [density map], plus renderer and loss terms."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


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

    def forward(self, x: Tensor, d: Optional[Tensor] = None) -> dict[str, Tensor]:
        """``x (N, 3)``, ``d (N, 3)`` or None -> the field's outputs, updated with the certifier's and
        then the density map's."""
        out = dict(self.field(x, d))
        if self.certifier is not None:
            # certifiers that smooth over space (rs_sdf) need the query points and the field itself
            extra = {"x": x, "field": self.field} if getattr(self.certifier, "wants_query", False) else {}
            out.update(self.certifier(out, **extra))
        if self.density_map is not None:
            out.update(self.density_map(out))
        return out

    def density_fn(self, x: Tensor) -> Tensor:
        """(S,3) -> (S,) volume density (occupancy-grid updates, visibility culling)."""
        return self(x, None)["density"]

    def radiance_fn(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """(S,3), (S,3) -> rgb (S,3), sigma (S,)."""
        out = self(x, d)
        return out["rgb"], out["density"]


class System(nn.Module):
    """Everything trainable or stateful of a run, so one ``state_dict`` checkpoints it all."""

    def __init__(self, chain: FieldChain, renderer: Optional[nn.Module], losses: dict[str, nn.Module],
                 aabb: Tensor):
        super().__init__()
        self.chain = chain
        self.renderer = renderer
        self.losses = nn.ModuleDict(losses)
        self.register_buffer("aabb", aabb.float().clone())

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: components may define ``param_groups(lr)`` for per-part rates."""
        groups: list[dict] = []
        seen: set[int] = set()
        roles = [("field", self.chain.field), ("certifier", self.chain.certifier),
                 ("density_map", self.chain.density_map), ("renderer", self.renderer),
                 *((f"loss.{k}", v) for k, v in self.losses.items())]
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
