"""Config classes of the ``shapes`` plugin (no torch import: listed by ``nls plugins``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.metric_notes import GROUND_TRUTH, chamfer_notes

FAMILIES = ("chair", "table", "lamp", "airplane", "sofa")


class PointSamplingOptions(ComponentConfig):
    """How training points are drawn per item (Littwin & Wolf 2019, Sec. 4, used for Eq. 3)."""

    image_size: int = Field(64, ge=16, le=256, description="input images are resized to this (the renders are 137x137)")
    n_points: int = Field(2048, ge=16, description="points with occupancy labels per item")
    sigma: float = Field(0.158, gt=0, description="std of the Gaussian around GT surface points, in the unit box "
                         "[-0.5,0.5]^3; the paper's variance 0.1 in [-1,1]^3 is std 0.316 there, 0.158 here")
    uniform_fraction: float = Field(0.1, ge=0, le=1, description="fraction of points uniform in the box (paper: 10%)")
    surface_points: int = Field(10000, ge=100, description="GT surface points kept per object (sampling centres, "
                                "distance grids)")
    seed: int = Field(0, description="seed of the per-item point samples (item i of a split draws from a "
                      "generator seeded by (seed, split, i))")


class R2N2Config(PointSamplingOptions):
    """3D-R2N2 layout: <object>/rendering/NN.png (137x137 RGBA) + rendering_metadata.txt + model.binvox (32^3)."""

    path: str = Field(..., description="folder holding object folders (searched recursively for model.binvox)")
    split_by: Literal["views", "objects"] = Field(
        "views", description="views: every object in every split, held-out views for val/test (seen shapes); "
        "objects: whole objects per split")
    val_views: list[int] = Field([20, 21], description="view indices of the val split (split_by=views)")
    test_views: list[int] = Field([22, 23], description="view indices of the test split (split_by=views)")
    objects: Optional[list[str]] = Field(None, description="only these object folder names (default: all)")
    views: int = Field(24, ge=1, description="renderings per object (R2N2: 24)")


class ShapeFamiliesConfig(PointSamplingOptions):
    """Procedural shape families (chairs, tables, lamps, airplanes, sofas from primitives with random
    proportions) rendered by nls into the R2N2 layout: 24 views, 32^3 binvox, 128^3 occupancy, GT mesh."""

    families: list[Literal["chair", "table", "lamp", "airplane", "sofa"]] = Field(
        list(FAMILIES), description="which families to generate")
    per_family: int = Field(10, ge=1, description="objects per family")
    dataset_seed: int = Field(0, description="seed of the shape proportions and camera poses")
    split: list[float] = Field([0.7, 0.1, 0.2], min_length=3, max_length=3,
                               description="train/val/test fractions of each family (fixed by dataset_seed)")
    views: int = Field(24, ge=1, le=64, description="renderings per object")
    render_size: int = Field(137, ge=16, le=512, description="rendering width/height in pixels (R2N2: 137)")
    fine_resolution: int = Field(128, ge=32, le=256, description="resolution of the fine occupancy grid")


class EncoderOptions(ComponentConfig):
    """The image encoder f shared by every single-image decoder (Littwin & Wolf 2019, Sec. 4)."""

    width: int = Field(64, ge=2, description="N: kernels of the first 5x5 conv; the embedding has 16N entries")
    blocks: int = Field(5, ge=1, le=7, description="B: blocks of 3 pre-activation modules, each strided and x2 wide")
    fc_layers: int = Field(2, ge=1, description="K: fully connected layers after average pooling")
    norm: Literal["batch", "group", "none"] = Field(
        "batch", description="normalisation in the pre-activation modules (paper: batch). Under DDP BatchNorm "
        "statistics are per process: use SyncBatchNorm or group for process-count independent results")


class VoxelDecoderConfig(EncoderOptions):
    """Baseline: embedding -> 3D transposed convolutions -> 32^3 occupancy logits (3D-R2N2-style decoder)."""

    channels: int = Field(64, ge=4, description="channels of the 4^3 seed volume (halved per upsampling)")
    resolution: int = Field(32, description="output grid side (32)")


class CondMLPConfig(EncoderOptions):
    """Baseline: occupancy MLP on [embedding, p] (Occupancy-Networks-like conditioning by concatenation)."""

    hidden: int = Field(256, ge=8, description="hidden width (pick it so the decoder has as many parameters as "
                        "the hypernet heads it is compared with)")
    layers: int = Field(4, ge=1, description="hidden layers")


class PointCEConfig(ComponentConfig):
    """Cross-entropy of predicted occupancy at the item's sampled points (Littwin & Wolf 2019, Eq. 3)."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")


class VoxelCEConfig(ComponentConfig):
    """Binary cross-entropy of a grid decoder's 32^3 occupancy logits against the voxels."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")


class ShapeIoUConfig(ComponentConfig):
    """IoU at 32^3 (voxel centres of the unit box) per object and mean; Chamfer-L1 x10^3 when a GT mesh exists."""

    split: str = Field("test", description="dataset split to evaluate")
    views: int = Field(1, ge=1, description="views whose embeddings are averaged per object (1: single-view IoU, "
                       "averaged over every view of the object in the split)")
    max_objects: Optional[int] = Field(None, ge=1, description="evaluate the first N objects only")
    chamfer: bool = Field(True, description="also Chamfer-L1 (x10^3, pipeline.metrics.chamfer: GT-normalised "
                          "frame, chamfer_samples per mesh) when a GT mesh exists")
    mesh_resolution: int = Field(128, ge=16, le=512, description="marching-cubes grid for the Chamfer meshes")
    chamfer_samples: int = Field(30000, ge=100, description="surface samples per mesh for Chamfer")


#: what the ``shape_iou`` evaluator reports
SHAPE_IOU_METRICS = {
    "iou": "intersection over union of the predicted and true 32³ occupancy, mean over the objects; 0..1",
    "n_objects": "objects scored",
    "views_averaged": "views whose embeddings are averaged per object",
    "chamfer_l1": chamfer_notes(keys=("chamfer_l1",), **GROUND_TRUTH)["chamfer_l1"]
    + "; mean over the objects, each meshed from its first view's embedding",
    "chamfer_failed": "objects whose mesh could not be extracted (left out of chamfer_l1)",
}
