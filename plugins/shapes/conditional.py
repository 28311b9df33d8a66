"""Conditional fields: image -> shape networks seen by the pipeline as a geometry field.

Typed API (every decoder)::

    encode(images (B,3,H,W)) -> e (B,E)
    logits(x (B,N,3), e (B,E)) -> (B,N)      occupancy logits (sdf decoders: -phi / eps scaled)
    occupancy(x, e) -> (B,N) in [0,1]
    grid_values(e (B,E), res) -> (B,res,res,res)  the field's contour quantity at the voxel centres
    forward(x (N,3), d) -> {"occupancy": (N,), ...}   FieldChain's call, for the *current* embedding

The current embedding: ``set_embedding(e)`` (``nls infer`` sets the mean embedding of its images;
the shape evaluator sets one per object). When none is set, ``forward`` uses the first view of the
first test item of the scene, so ``nls export`` and the mesh written after training show a
reconstruction of a real input; a field built without a shape dataset raises NLSError instead.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pipeline.types import NLSError
from plugins.shapes.collection import voxel_centres


class ConditionalField(nn.Module):
    """Base of the image-conditioned shape fields: the typed API of the module docstring around an
    image ``encoder``; subclasses implement :meth:`logits`."""

    #: (quantity, level, inside) of the field's surface: occupancy 0.5 (values above are inside)
    contour = ("occupancy", 0.5, "above")

    def __init__(self, encoder: nn.Module, ctx=None):
        super().__init__()
        self.encoder = encoder
        self._current: Optional[Tensor] = None
        self._default_image: Optional[Tensor] = None
        scene = getattr(ctx, "scene", None)
        datasets = getattr(scene, "datasets", None) or {}
        for split in ("test", "val", "train"):
            ds = datasets.get(split)
            if ds is not None and len(ds) and hasattr(ds, "image"):
                self._default_image = ds.image(*ds.items[0])
                break
        self.image_size = (scene.meta or {}).get("image_size") if scene is not None else None

    # -- typed API ----------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """Entries E of the encoder's embedding."""
        return self.encoder.dim

    def encode(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) -> embeddings e (B,E); NLSError on any other shape."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise NLSError(f"encode: expected images (B,3,H,W), got {tuple(images.shape)}")
        return self.encoder(images)

    def logits(self, x: Tensor, e: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Occupancy logits, implemented by subclasses. x (B,N,3), e (B,E) -> (B,N)."""
        raise NotImplementedError

    def occupancy(self, x: Tensor, e: Tensor) -> Tensor:
        """Sigmoid of :meth:`logits`. x (B,N,3), e (B,E) -> (B,N) in [0, 1]."""
        return torch.sigmoid(self.logits(x, e))

    def point_outputs(self, x: Tensor, e: Tensor) -> dict[str, Tensor]:
        """(B,N,3), (B,E) -> dict of (B,N) outputs (subclasses add ``sdf``)."""
        return {"occupancy": self.occupancy(x, e)}

    def grid_values(self, e: Tensor, res: int = 32, chunk: int = 65536) -> Tensor:
        """The contour quantity at the res^3 voxel centres of the unit box. (B,E) -> (B,res,res,res)."""
        pts = torch.from_numpy(voxel_centres(res).reshape(-1, 3)).float().to(e.device)
        q = self.contour[0]
        out = [self.point_outputs(pts[s:s + chunk].expand(e.shape[0], -1, -1), e)[q]
               for s in range(0, len(pts), chunk)]
        return torch.cat(out, 1).reshape(e.shape[0], res, res, res)

    def inside(self, values: Tensor) -> Tensor:
        """Inside test of contour-quantity values against ``contour``'s level and side.
        Any shape -> bool of the same shape."""
        _, level, side = self.contour
        return values > level if side == "above" else values < level

    # -- the current embedding (FieldChain / export / infer) --------------------------------
    def set_embedding(self, e: Optional[Tensor]) -> None:
        """e: (E,) or (1,E), or None to fall back to the scene's first test view."""
        if e is not None:
            e = e.detach().reshape(1, -1)
            if e.shape[1] != self.embedding_dim:
                raise NLSError(f"set_embedding: embedding has {e.shape[1]} entries, this field needs "
                               f"{self.embedding_dim}")
        self._current = e

    def current_embedding(self) -> Tensor:
        """The embedding set by :meth:`set_embedding`, else the encoding of the scene's
        default image -> (1,E); NLSError when there is neither."""
        if self._current is not None:
            return self._current
        if self._default_image is None:
            raise NLSError(f"{type(self).__name__}: no current embedding. This field reconstructs a shape from "
                           f"images: call set_embedding(field.encode(images)) or use `nls infer RUN_DIR IMAGE "
                           f"-o mesh.ply`; export without images needs a scene with a shape dataset")
        dev = next(self.parameters()).device
        with torch.no_grad():
            return self.encode(self._default_image[None].to(dev))

    def forward(self, x: Tensor, d: Optional[Tensor] = None) -> dict[str, Tensor]:
        """FieldChain's call for the current embedding: x (N,3) -> dict of (N,) outputs (``d`` unused)."""
        e = self.current_embedding()
        return {k: v[0] for k, v in self.point_outputs(x[None], e).items()}


def batch_outputs(field: ConditionalField, batch: dict, out: dict) -> Tensor:
    """The embedding of the batch's images, computed once per step and shared by every loss term
    through the step's ``out`` dict. -> e (B,E)."""
    if "embedding" not in out:
        if "image" not in batch:
            raise NLSError("this loss needs a shape-dataset scene (items with 'image'); the scene has none")
        out["embedding"] = field.encode(batch["image"])
    return out["embedding"]


def conditional_field(system) -> ConditionalField:
    """``system.chain.field`` when it is a :class:`ConditionalField`, else NLSError."""
    f = system.chain.field
    if not isinstance(f, ConditionalField):
        raise NLSError(f"this component needs an image-conditioned shape field (hypernet, deep_level_sets, "
                       f"voxel_decoder, cond_mlp), not {type(f).__name__}")
    return f
