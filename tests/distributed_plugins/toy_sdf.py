"""A tiny dataset-based method for the distributed tests and benchmark (loaded with ``--plugins-dir``).

Scene ``toy_sphere_items``: a map-style dataset whose item ``i`` is ``points`` points in the box
with their exact signed distance to a sphere of radius ``radius``; the numbers come from a generator
seeded by ``(seed, i)`` only, so an item is the same on every rank (the rule of
:mod:`pipeline.distributed`). Field ``toy_mlp``: an MLP ``(N,3) -> sdf (N,)``; it can keep its first
layer frozen for the first ``freeze_first_steps`` steps (a staged schedule through
``on_train_step``). Loss ``toy_sdf_mse``: mean squared SDF error over this rank's items, plus
``eikonal`` times the eikonal residual ``(|grad f| - 1)^2`` at ``eikonal_points`` uniform points drawn
from the global RNG (the same number on every rank, so the draws stay in lockstep); ``delay_s``
slows each step down for the fault test.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.hookspecs import hookimpl

__version__ = "0.1"


class ToySceneConfig(ComponentConfig):
    items: int = Field(64, ge=1, description="dataset size")
    points: int = Field(32, ge=1, description="points per item")
    radius: float = Field(0.5, gt=0)
    seed: int = 0
    fail: bool = Field(False, description="raise on load (to test failure handling)")
    warn: str = Field("", description="a warning to give on load (to test that runs keep their warnings)")


class ToyFieldConfig(ComponentConfig):
    hidden: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)
    freeze_first_steps: int = Field(0, ge=0)


class ToyLossConfig(ComponentConfig):
    eikonal: float = Field(0.1, ge=0)
    eikonal_points: int = Field(64, ge=1)
    delay_s: float = Field(0.0, ge=0, description="sleep per step (gives a fault test time to act)")


def build_scene(cfg: ToySceneConfig, ctx):
    def load():
        import torch

        from pipeline.types import DataError, SceneData

        if cfg.fail:
            raise DataError("toy_sphere_items: scene.fail is true (a deliberately broken scene)")
        if cfg.warn:
            from pipeline.notices import warn

            warn(cfg.warn)

        class Items(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return cfg.items

            def __getitem__(self, i: int) -> dict:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(i))
                x = torch.rand(cfg.points, 3, generator=g) * 2 - 1
                return {"x": x, "sdf": x.norm(dim=-1) - cfg.radius}

        return SceneData(splits={}, aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]), datasets={"train": Items()},
                         meta={"source": "toy_sphere_items", "items": cfg.items})
    return load


def build_field(cfg: ToyFieldConfig, ctx):
    import torch
    from torch import nn

    class ToyMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dims = [3] + [cfg.hidden] * cfg.layers
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
            self.head = nn.Linear(dims[-1], 1)

        def on_train_step(self, step: int) -> None:
            self.layers[0].requires_grad_(step >= cfg.freeze_first_steps)

        def forward(self, x, d=None):
            h = x
            for layer in self.layers:
                h = torch.nn.functional.softplus(layer(h), beta=10)
            return {"sdf": self.head(h).squeeze(-1)}

    return ToyMLP()


def build_loss(cfg: ToyLossConfig, ctx):
    import time

    import torch
    from torch import nn

    class ToyLoss(nn.Module):
        def forward(self, batch, out, system):
            if cfg.delay_s:
                time.sleep(cfg.delay_s)
            field = system.chain
            pred = field(batch["x"].reshape(-1, 3))["sdf"]
            loss = torch.mean((pred - batch["sdf"].reshape(-1)) ** 2)
            if cfg.eikonal > 0:
                x = (torch.rand(cfg.eikonal_points, 3, device=pred.device) * 2 - 1).requires_grad_(True)
                (g,) = torch.autograd.grad(field(x)["sdf"].sum(), x, create_graph=True)
                loss = loss + cfg.eikonal * torch.mean((g.norm(dim=-1) - 1) ** 2)
            return loss

    return ToyLoss()


@hookimpl
def nls_register_scene_sources(register):
    register("toy_sphere_items", build_scene, config=ToySceneConfig, description="toy SDF regression items")


@hookimpl
def nls_register_fields(register):
    register("toy_mlp", build_field, config=ToyFieldConfig, produces={"sdf"}, description="toy MLP SDF")


@hookimpl
def nls_register_losses(register):
    register("toy_sdf_mse", build_loss, config=ToyLossConfig, consumes=[{"sdf"}], description="toy SDF loss")
