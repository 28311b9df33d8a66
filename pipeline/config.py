"""Scene YAML: schema, validation, ``--set`` overrides, chain checks and the resolved config.

A scene file lists the stages in pipeline order, each as ``type:`` plus options::

    name: csg_demo            # names the run folder outputs/<name>/<method>/<timestamp>
    method: ngp_dense
    scene:     {type: procedural, shape: csg}
    field:     {type: dense_grid, resolution: 96}
    density:   null           # optional stage: sdf/occupancy -> density
    renderer:  {type: volume}
    extractor: {type: marching_cubes, resolution: 192}
    losses:    [{type: photometric}]
    evaluators: [{type: psnr}, {type: chamfer}]
    train:  {steps: 1500, batch_rays: 4096}
    eval:   {split: test}
    output: {root: outputs}

Everything is validated before any heavy import: unknown keys, wrong types, unknown
component names and chains whose produce/consume do not fit are refused with one
paragraph naming the file, the key path, the bad value and what would be valid.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.components import Component, ComponentConfig, ConfigModel
from pipeline.types import ConfigError, NLSError, PluginError

SINGLE_STAGES = ("scene", "field", "certifier", "density", "renderer", "extractor")
LIST_STAGES = {"losses": "loss", "evaluators": "evaluator"}
REQUIRED_STAGES = ("scene", "field")
#: the command that lists the options of the ``train:``, ``eval:``, ``output:`` and ``reference:`` blocks
CONFIG_LISTING = "nls plugins --config"


def component_listing(name: str) -> str:
    """The command that shows the options of the component ``name``."""
    return f"nls plugins {name}"


class TrainConfig(ConfigModel):
    """Training-loop settings (the ``train:`` block)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan or inf is a typo, never a setting
    steps: int = Field(1000, ge=1, description="total optimisation steps; resume never goes past it")
    batch_rays: int = Field(4096, ge=1, description="rays per step (posed-image scenes)")
    depth_rays: int = Field(0, ge=0, description="more rays per step, through pixels with a measured depth only "
                            "(DS-NeRF's keypoint rays: scene.sparse_depth, depth maps), for the depth loss; the "
                            "other losses see them too")
    batch_items: int = Field(16, ge=1, description="dataset items per step, over all processes "
                             "(scenes with a training dataset, e.g. shape collections)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    lr_final_factor: float = Field(0.1, gt=0, le=1, description="exponential decay to lr*factor at the last step")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 weight decay (added to the gradients of every parameter group)")
    fused_adam: bool = Field(False, description="torch's fused Adam kernel: faster optimiser steps on large "
                             "grids (csg_dense: 9% less training time on 2 CPU cores), not bit-identical with the default "
                             "kernels (parameters differ at float rounding, so figures move in their last "
                             "digits); off keeps runs comparable bit for bit with earlier ones")
    max_seconds: Optional[float] = Field(None, gt=0, description="stop once this much training time is spent "
                                         "(over all resumes), even before `steps`")
    seed: int = Field(0, description="seed for torch, numpy and ray sampling")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when available")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    log_every: int = Field(25, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every: int = Field(250, ge=1, description="steps between atomic checkpoints")
    grid_update_every: int = Field(16, ge=1, description="steps between occupancy-grid updates")
    grid_warmup: int = Field(256, ge=0, description="steps before the occupancy grid starts culling")
    val_every: Optional[int] = Field(None, ge=1, description="steps between validations during training (off by "
                                     "default; not counted as training time): the PSNR of a few held-out views at "
                                     "preview size, logged to metrics.jsonl as psnr_<split> (the mean; with several "
                                     "views each view's too, as psnr_<split>/<view>), and each view's "
                                     "prediction | ground truth | depth in renders/progress/; for a run without "
                                     "images, the geometry (see val_geometry)")
    val_geometry: Optional[bool] = Field(None, description="at each validation, also mesh the field at "
                                         "val_resolution and log its Chamfer-L1 (x10^3, val_samples points) against "
                                         "the scene's ground-truth mesh (val_chamfer_l1) or, without one, its input "
                                         "points (val_fit_chamfer_l1), with mesh | reference | distance renders in "
                                         "renders/progress/; default (null): on for runs without images")
    val_resolution: int = Field(64, ge=8, le=512, description="grid resolution of val_geometry's mesh")
    val_samples: int = Field(10000, ge=100, description="points sampled on each side of val_geometry's Chamfer")
    val_split: Optional[str] = Field(None, description="split to validate on (default: val when the scene "
                                     "loaded it, else eval.split); training views are previewed from their "
                                     "refined poses and through their learned exposure")
    val_views: int = Field(1, ge=1, description="validation views, spread evenly over the split")
    val_max_side: Optional[int] = Field(200, ge=8, description="longest side of a validation render in pixels: "
                                        "the image is rendered 1/f the size (f the smallest integer that fits) "
                                        "and scored against the ground truth averaged over f x f blocks; "
                                        "null renders full size. Also the side of val_geometry's square mesh "
                                        "previews (400 when null)")
    tensorboard: bool = Field(False, description="also write metrics.jsonl's lines and the validation previews as "
                              "TensorBoard events in <run>/tensorboard/ (needs pip install '.[tensorboard]')")
    wandb: bool = Field(False, description="also send metrics.jsonl's lines and the validation previews to a "
                        "Weights & Biases run named after the run folder (needs pip install '.[wandb]' and "
                        "`wandb login`; WANDB_MODE=offline keeps it in <run>/wandb/ for `wandb sync`)")
    wandb_project: str = Field("nls", min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$",
                               description="the W&B project of train.wandb")
    pixel_jitter: bool = Field(False, description="cast each training ray through a uniform random point of its "
                               "pixel instead of the centre (area sampling: matches anti-aliased images)")
    exposure: Literal["none", "gain", "affine"] = Field("none", description="learn a colour transform of each "
                                                         "training image with the field, for photos whose exposure or "
                                                         "white balance differs from shot to shot: gain (3 per-channel "
                                                         "gains an image) or affine (a 3x3 matrix and an offset); "
                                                         "rendered views use their mean, which is held at the identity. "
                                                         "The transforms are written to exposure.json")
    exposure_lr: float = Field(3e-3, gt=0, description="Adam learning rate of the exposure transforms (decays "
                               "with lr_final_factor as the others do)")
    refine_poses: bool = Field(False, description="learn a correction of each training camera's pose with the "
                               "field (a rotation about the camera's centre and a shift), for poses from "
                               "structure-from-motion that are off by a degree or so; held-out views keep their "
                               "poses, and the cameras' common motion (a rotation, translation and scaling of "
                               "them all) is held at zero. Renders and evaluations of the training views use the "
                               "refined poses; they are written to poses.json")
    pose_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the pose corrections (radians and world "
                           "units; decays with lr_final_factor as the others do). 1e-3 for poses off by more than "
                           "about 3 degrees (it costs more on near-exact poses; README: pose refinement figures)")
    refine_focal: bool = Field(False, description="learn a correction of the focal length with the field, one "
                               "factor for every camera (focal_per_camera: one per camera), for focal lengths from "
                               "EXIF tags or a rough calibration that "
                               "are off by a few per cent; with or without refine_poses. It is learned as a dolly "
                               "zoom (the field's frame scaled with it about the point the cameras look at), which a "
                               "scene seen from around it needs. Held-out views are rendered at the refined focal "
                               "length too; the factor is written to poses.json")
    focal_lr: float = Field(3e-3, gt=0, description="Adam learning rate of the focal-length correction (in log "
                            "scale: 3e-3 is about 0.3% a step; decays with lr_final_factor as the others do)")
    focal_per_camera: bool = Field(False, description="with refine_focal: one factor per camera, not one for all, "
                                   "for captures from several cameras or zoom settings; training images whose given "
                                   "fx, fy, cx, cy agree count as one camera, and the field's frame follows the "
                                   "factors' mean. Held-out views take the factor of the camera nearest their "
                                   "intrinsics (within 2%; else the mean). The factors are written to poses.json")

    @model_validator(mode="after")
    def _focal_per_camera_needs_refine_focal(self):
        if self.focal_per_camera and not self.refine_focal:
            raise ValueError("focal_per_camera: true refines each camera's focal length, which needs refine_focal: "
                             "true; set train.refine_focal: true, or drop focal_per_camera")
        return self


class EvalConfig(ConfigModel):
    """Evaluation settings (the ``eval:`` block)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan or inf is a typo, never a setting
    split: str = Field("test", description="image split used for PSNR/SSIM and `nls render`")
    max_images: Optional[int] = Field(None, ge=1, description="evaluate on the first N images only (after `every`)")
    every: int = Field(1, ge=1, description="evaluate every k-th image of the split (indices 0, k, 2k, ...): a "
                       "subset spread over the whole split, e.g. every 10th view of lego's 200-view test circle, "
                       "where the first N views are one arc of it")
    chunk: int = Field(8192, ge=1, description="rays per rendering chunk (bounds memory; on CPU the volume "
                       "renderer takes at most 2^22 / samples_per_ray rays a chunk)")
    supersample: int = Field(1, ge=1, le=4, description="rays per pixel side when rendering the eval split "
                             "(s x s rays averaged: anti-aliasing, for images that were rendered or downscaled "
                             "with it, e.g. procedural/mesh scenes with scene.supersample 2)")
    fscore_tau: float = Field(0.01, gt=0, description="F-score threshold in the GT-normalised frame")
    chamfer_samples: int = Field(30000, ge=100, description="area-uniform surface samples per mesh for the chamfer evaluator (and its sampling floor)")
    align_poses: int = Field(0, ge=0, description="steps of test-time pose alignment: before a held-out view is "
                             "scored, its camera's pose is fitted to its image with the field frozen (as BARF "
                             "evaluates runs that refine poses, whose held-out views can carry pose errors of their "
                             "own or sit a fraction of a pixel off the refined frame); 0 (the default) scores the "
                             "views from their poses as given. 100 suits most scenes; the fitted corrections go to "
                             "renders/<split>/pose_alignment.json")
    align_rays: int = Field(1024, ge=16, description="random pixels per step of eval.align_poses")


class OutputConfig(ConfigModel):
    """Where runs go (the ``output:`` block)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan or inf is a typo, never a setting
    root: str = Field("outputs", description="runs go to <root>/<scene>/<method>/<timestamp>")


TOP_LEVEL = {
    "name": "scene name (string)",
    "method": "method label (string)",
    "description": "free text",
    **{s: f"{s} stage: {{type: ..., options}}" for s in SINGLE_STAGES},
    "losses": "list of {type: ..., options}",
    "evaluators": "list of {type: ..., options}",
    "train": "training settings",
    "eval": "evaluation settings",
    "output": "output settings",
    "reference": "published figures for this scene: {metric: number or {value: number, source: text}}",
}


class ReferenceValue(ConfigModel):
    """One published figure of the ``reference:`` block, under its metric's name: ``reference: {psnr:
    {value: 31.2, source: "Table 1"}}``, or a bare number (``psnr: 31.2``); ``nls report`` shows it next to
    the measured one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan or inf is a typo, never a setting
    value: float = Field(description="the published number, in the units nls reports the metric in")
    source: str = Field("", description="where it comes from, e.g. 'Table 2 of the paper'")


def validate_reference(source: str, data: Any) -> dict[str, ReferenceValue]:
    """``reference: {psnr: {value: 31.2, source: "Tab. 1"}, chamfer_l1: 4.5}`` -> {metric: ReferenceValue}:
    each figure is a bare number (a value without a source) or a ``{value, source}`` mapping. Every
    bad figure is reported, one problem each."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: reference must be a mapping {{metric: number or {{value: number, "
                          f"source: text}}}}, got {data!r}")
    problems = _Problems(source)
    out = {}
    for k, v in data.items():
        if isinstance(v, (int, float)):
            v = {"value": v}
        elif not isinstance(v, dict):
            problems.add(f"reference.{k} = {v!r} must be a number (the published value) or a mapping "
                         f"{{value: number, source: text}}")
            continue
        key = f"reference.{k}"
        out[str(k)] = problems.run(lambda key=key, v=v: validate_block(source, key, ReferenceValue, v, CONFIG_LISTING))
    problems.raise_any()
    return out


@dataclass
class StageChoice:
    """A component selected for a stage, with its validated options."""

    stage: str
    component: Component
    options: ComponentConfig

    @property
    def name(self) -> str:
        """The component's name (its ``type:``)."""
        return self.component.name

    def to_dict(self) -> dict:
        """``{"type": name, **options}`` with the options as JSON-ready values."""
        return {"type": self.component.name, **self.options.model_dump(mode="json")}

    def build(self, ctx: Any = None) -> Any:
        """Build the component with these options and ``ctx``; the result is labelled with the
        component (:func:`pipeline.types.label_component`) so errors of its calls can name it."""
        from pipeline.types import label_component

        built = self.component.build(self.options, ctx)
        if built is None:
            raise PluginError(f"{self.component.label}: its factory returned None (a missing `return`?); it "
                              f"returns the built component, e.g. an nn.Module")
        label_component(built, self.component.label)
        return built


@dataclass
class SceneConfig:
    """A validated scene file."""

    name: str
    method: str
    source: str
    stages: dict[str, Optional[StageChoice]]
    losses: list[StageChoice]
    evaluators: list[StageChoice]
    train: TrainConfig
    eval: EvalConfig
    output: OutputConfig
    description: str = ""
    raw: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)

    def choice(self, stage: str) -> Optional[StageChoice]:
        """The choice of ``stage``, or None when that stage is empty or not a single stage."""
        return self.stages.get(stage)

    def all_choices(self) -> list[StageChoice]:
        """Every chosen component: the single stages in order, then losses, then evaluators."""
        return [c for c in self.stages.values() if c] + self.losses + self.evaluators

    def to_dict(self) -> dict:
        """Plain, fully resolved config; ``yaml.safe_load`` reads it back."""
        d: dict[str, Any] = {"name": self.name, "method": self.method}
        if self.description:
            d["description"] = self.description
        for s in SINGLE_STAGES:
            c = self.stages.get(s)
            d[s] = c.to_dict() if c else None
        d["losses"] = [c.to_dict() for c in self.losses]
        d["evaluators"] = [c.to_dict() for c in self.evaluators]
        d["train"] = self.train.model_dump(mode="json")
        d["eval"] = self.eval.model_dump(mode="json")
        d["output"] = self.output.model_dump(mode="json")
        if self.reference:
            d["reference"] = {k: v.model_dump(mode="json") for k, v in self.reference.items()}
        return d

    def provenance(self, versions: dict[str, str]) -> dict:
        """Which plugin (and version) supplied each chosen component."""
        return {f"{c.stage}:{c.name}": {"plugin": c.component.plugin,
                                         "version": versions.get(c.component.plugin, "?")}
                for c in self.all_choices()}


# -- reading -----------------------------------------------------------------------------

class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a YAML text gives the same key twice (PyYAML would keep the last silently).

    ``key`` is the dotted path of the repeated key (``train``, ``field.resolution``, ``losses.0.weight``)
    and ``marks`` the positions of its first and second occurrence."""

    def __init__(self, key: str, first: yaml.Mark, second: yaml.Mark):
        self.key, self.marks = key, (first, second)
        super().__init__(None, None, f"key {key!r} appears twice ({self.where()})", second)

    def where(self) -> str:
        """``lines 3 and 7``, or ``line 3, columns 2 and 12`` when both are on one line."""
        a, b = self.marks
        if a.line == b.line:
            return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
        return f"lines {a.line + 1} and {b.line + 1}"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (:class:`DuplicateKeyError`).

    Scene files, a run's config.yaml and ``--set`` values are read with it. The check runs on the
    composed node tree, before anything is constructed, so that the path of the key is known and
    merge keys (``<<: *base``), whose keys the mapping may override on purpose, are not counted."""

    def construct_document(self, node: yaml.Node) -> Any:
        """Check ``node``'s mappings for repeated keys, then construct it as SafeLoader does."""
        self._check_unique(node, [], set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: list[str], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, [*path, str(i)], seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._check_unique(value_node, path, seen)
                    continue
                key = self._key(key_node)
                label = [*path, str(key if key is not None else key_node.value)]
                if key is not None and key in first:
                    raise DuplicateKeyError(".".join(label), first[key], key_node.start_mark)
                if key is not None:
                    first[key] = key_node.start_mark
                self._check_unique(value_node, label, seen)

    def _key(self, key_node: yaml.Node) -> Any:
        """The value a scalar key stands for (``1`` and ``0x1`` are one key), or None when not hashable."""
        if not isinstance(key_node, yaml.ScalarNode):
            return None
        try:
            key = self.construct_object(key_node)
            hash(key)
        except (yaml.YAMLError, TypeError, ValueError):
            return None
        return key


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load(text)``, except that a repeated key raises :class:`DuplicateKeyError`."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml(path: Path) -> dict:
    """Parse a scene file into a mapping; a missing file, a folder, invalid YAML, a repeated key,
    non-UTF-8 text, an empty file or a top level that is not a mapping raises ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"scene file {path} does not exist. Give the path of a scene YAML, "
                          f"e.g. scenes/csg_dense.yaml (see `ls scenes/`), or of data: a Blender, instant-ngp or "
                          f"COLMAP folder, or a mesh file.")
    if path.is_dir():
        raise ConfigError(f"scene file {path} is a directory; give a .yaml file inside it.")
    try:
        data = load_yaml_text(path.read_text())
    except DuplicateKeyError as exc:
        raise ConfigError(f"scene file {path}: key {exc.key!r} is given twice, at {exc.where()}; YAML would "
                          f"keep only the second and drop the first silently. Merge the two into one "
                          f"(or delete the one you do not mean).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"scene file {path} is not valid YAML{where}: {problem}. "
                          f"Check indentation and quoting there.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"scene file {path} is not a text file (UTF-8 expected).") from None
    except (ValueError, RecursionError) as exc:  # PyYAML's constructors: an impossible date, deep nesting
        raise ConfigError(f"scene file {path} is not valid YAML: {str(exc) or type(exc).__name__}. "
                          f"Quote the value if it is meant as text.") from None
    if data is None:
        raise ConfigError(f"scene file {path} is empty (or holds only comments); a scene needs at least "
                          f"`scene: {{type: ...}}` and `field: {{type: ...}}` (see scenes/ for examples).")
    if not isinstance(data, dict):
        raise ConfigError(f"scene file {path}: the top level must be a mapping of stage names "
                          f"({', '.join(TOP_LEVEL)}), got {type(data).__name__}.")
    return data


def where_set(source: str, overrides: Sequence[str], key: str) -> str:
    """Whom an error about config ``key`` (``"scene.path"``) blames: ``--set OVERRIDE (on SOURCE)`` for the
    last of ``overrides`` that set the key or a block holding it, else the scene file ``source``."""
    parts = key.split(".")
    given = [o for o in overrides if "=" in o and _is_prefix(parse_override(o)[0], parts)]
    return f"--set {given[-1]} (on {source})" if given else source


def _is_prefix(head: list[str], parts: list[str]) -> bool:
    """Whether the dotted key ``head`` is ``parts`` or one of the blocks holding it."""
    return head == parts[:len(head)]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set train.steps=200")
    key, _, value = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    try:
        parsed = load_yaml_text(value) if value.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {text}: the value gives key {exc.key!r} twice; give each key once") from None
    except yaml.YAMLError as exc:
        if value.lstrip().startswith(("[", "{")):  # meant as a list or mapping: a string would mislead later
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {text}: the value is not valid YAML ({why}); a list is written "
                              f"[a, b], a mapping {{key: value}}, and the whole --set is quoted for the shell, "
                              f"e.g. --set 'losses=[{{type: photometric}}]'") from None
        parsed = value  # e.g. a description with ': ' in it: taken as the text it is
    return parts, parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` with each ``KEY=VALUE`` override applied in order (a deep copy).

    Setting a block's ``type`` to a different component starts that block afresh: the old
    component's options are dropped (they belong to another config class), except those that
    other overrides in the same list set, before or after.
    """
    data = copy.deepcopy(data)
    given = [tuple(parse_override(t)[0]) for t in overrides]
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                key: Any = _index(p, parts[: i + 1], text, len(node))
            else:
                key = p
                if node.get(p) is None:  # an absent list stage is an empty list: its items have no index yet
                    node[p] = [] if node is data and p in LIST_STAGES else {}
            if isinstance(node[key], str) and _is_stage_block(parts[: i + 1]):
                node[key] = {"type": node[key]}  # the shorthand `field: dense_grid` is `{type: dense_grid}`
            node = node[key]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {text}: {'.'.join(parts[:i + 1])} is a {type(node).__name__}, "
                                  f"not a mapping, so it has no key {parts[i + 1]!r}")
        if isinstance(node, list):
            idx = _index(parts[-1], parts, text, len(node))
            node[idx] = value
        else:
            if parts[-1] == "type" and len(parts) > 1 and node.get("type") not in (None, value):
                block = tuple(parts[:-1])
                kept = {g[len(block)] for g in given if len(g) > len(block) and g[:len(block)] == block}
                for k in [k for k in node if k not in kept]:
                    del node[k]
            node[parts[-1]] = value
    return data


def _index(p: str, parts: list[str], text: str, n: int) -> int:
    if not re.fullmatch(r"-?\d+", p) or not -n <= int(p) < n:
        lst = ".".join(parts[:-1])
        example = f"--set '{lst}=[{{type: NAME, OPTION: VALUE}}, ...]'"
        if n == 0:
            raise ConfigError(f"--set {text}: {'.'.join(parts)} indexes {lst}, which is empty (or not in the "
                              f"scene); give the whole list to add items, e.g. {example}")
        raise ConfigError(f"--set {text}: {'.'.join(parts)} indexes a list of {n} items; "
                          f"use an index 0..{n - 1}, or give the whole list to add items, e.g. {example}")
    return int(p)


def _is_stage_block(path: list[str]) -> bool:
    """Whether ``path`` names a stage block (``field``, ``losses.0``), which may be a bare type name."""
    return (len(path) == 1 and path[0] in SINGLE_STAGES) or (len(path) == 2 and path[0] in LIST_STAGES)


#: a ``${NAME}`` or ``$NAME`` reference to an environment variable in a string option
_VAR_RE = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")


def expand_vars(value: Any) -> Any:
    """Expand ``${NLS_DATA}`` (the shared data root) and other env vars in strings. Only the variable
    ``NLS_DATA`` itself (``${NLS_DATA}``, ``$NLS_DATA``) is the data root; any other unset variable,
    ``${NLS_DATAX}`` included, is named as unset."""
    if isinstance(value, str) and "$" in value:
        names = [m.group(1) or m.group(2) for m in _VAR_RE.finditer(value)]
        env: Any = os.environ
        if "NLS_DATA" in names and not os.environ.get("NLS_DATA"):  # unset or empty: the default root
            from pipeline.scenes import data_root, default_data_root  # local: avoids import cycles

            root = data_root()
            if root is None:
                raise ConfigError(f"{value!r} needs the data root, but NLS_DATA is "
                                  f"{'empty' if 'NLS_DATA' in os.environ else 'not set'} and "
                                  f"the default root {default_data_root()} (shared/data beside the checkout) does "
                                  f"not exist. Set NLS_DATA=/path/to/data.")
            env = {**os.environ, "NLS_DATA": str(root)}
        elif "NLS_DATA" in names and not Path(os.environ["NLS_DATA"]).expanduser().is_dir():
            raise ConfigError(f"{value!r} needs the data root, but NLS_DATA={os.environ['NLS_DATA']} is not a "
                              f"folder. Set NLS_DATA to the folder that holds the data (meshes/, nerf/, ...).")
        undefined = [n for n in names if n not in os.environ and n != "NLS_DATA"]
        if undefined:
            raise ConfigError(f"{value!r} uses the environment variable(s) {', '.join(undefined)}, which "
                              f"are not set (${{NLS_DATA}} is the data root)")
        # one pass over the user's text: a `$` in a substituted path (a checkout at /home/me/$work) is kept as is
        return _VAR_RE.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)
    return value


# -- validation ---------------------------------------------------------------------------

def _fmt_loc(prefix: str, loc: tuple) -> str:
    return ".".join([prefix, *[str(x) for x in loc]]) if prefix else ".".join(str(x) for x in loc)


def validation_problems(prefix: str, exc: ValidationError, model: type[BaseModel],
                        skip: Container[str] = (), listing: Optional[str] = None) -> list[str]:
    """One ``key = value: message (field help).`` line per mistake in a pydantic error (none for the
    options in ``skip``); an unknown key lists the valid keys of ``model``, and the first one names the
    command ``listing`` that shows them with types and help."""
    lines = []
    for err in exc.errors():
        if err["loc"] and str(err["loc"][0]) in skip:
            continue
        key = _fmt_loc(prefix, err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(model.model_fields) or "(no options)"
            hint = f" (each with its type and help: `{listing}`)" if listing else ""
            lines.append(f"{key}: unknown key; valid keys here: {valid}{hint}.")
            listing = None  # once per block, not per misspelt key
            continue
        fld = model.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        hint = f" ({fld.description})" if fld is not None and fld.description else ""
        if err["type"] == "missing":  # its input is the mapping it is missing from, not a value of the key
            lines.append(f"{key} is required{hint}.")
            continue
        if isinstance(err.get("input"), dict):  # a check across the block's keys: the block is not worth printing
            lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')}.")
            continue
        lines.append(f"{key} = {err.get('input')!r}: {err['msg']}{hint}.")
    return lines


class BlockErrors(ConfigError):
    """Several mistakes found in one block (``problems``: one line each, without the source);
    :class:`_Problems` lists them one per line and counts each."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        super().__init__(_problems_text(source, self.problems))


def _problems_text(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {t}" for t in problems)


#: set while reading back a run's own config.yaml: options a newer nls no longer knows are
#: dropped with a warning instead of refusing the run (old runs stay usable after a rename).
#: It holds the dotted keys of the ``--set`` overrides given with it: an unknown option at or
#: under one of those is the user's typo, not a stale option, and is refused as usual.
_LENIENT: list[Optional[tuple[str, ...]]] = [None]


def _stale(prefix: str, key: str) -> bool:
    """While reading back a run: whether unknown option ``prefix.key`` may be dropped."""
    full = f"{prefix}.{key}"
    return _LENIENT[0] is not None and not any(full == o or full.startswith(o + ".") for o in _LENIENT[0])


def validate_block(source: str, prefix: str, model: type[BaseModel], data: Any,
                   listing: Optional[str] = None) -> BaseModel:
    """``data`` (None: ``{}``) validated as ``model`` with env vars expanded; errors raise ConfigError
    at ``prefix`` (an unknown key names ``listing``, the command that lists the options). While a run's
    config is read back, stale options are dropped with a warning."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix} must be a mapping of options, got {data!r}")
    if _LENIENT[0] is not None:
        stale = [k for k in data if k not in model.model_fields and _stale(prefix, k)]
        if stale:
            import sys

            print(f"warning: {source}: ignoring option(s) this version of nls does not know: "
                  f"{', '.join(f'{prefix}.{k}' for k in stale)}", file=sys.stderr)
            data = {k: v for k, v in data.items() if k not in stale}
    expanded, problems, unset = {}, [], set()
    for k, v in data.items():
        try:
            expanded[k] = expand_vars(v)
        except ConfigError as exc:  # reported; the option's other checks would only repeat it
            problems.append(f"{prefix}.{k}: {exc}")
            expanded[k], unset = v, unset | {str(k)}
    try:
        result = model.model_validate(expanded)
    except ValidationError as exc:
        problems += validation_problems(prefix, exc, model, skip=unset, listing=listing)
    if problems:
        raise BlockErrors(source, problems)
    return result


def _choice(host, source: str, key: str, stage: str, block: Any) -> StageChoice:
    if isinstance(block, str):
        block = {"type": block}
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: {key} must be a mapping with a 'type' key, got {block!r}")
    if "type" not in block and stage == "scene" and "path" in block:
        try:
            path = expand_vars(block["path"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}.path: {exc}") from None
        detected = host.scene_type_for_path(Path(path))
        if detected:
            block = {"type": detected, **block}
    if "type" not in block:
        types = ", ".join(c.name for c in host.components(stage)) or "none registered"
        raise ConfigError(f"{source}: {key} has no 'type'. Valid {stage} types: {types}")
    block = dict(block)
    name = block.pop("type")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {key}.type = {name!r} must be a string")
    comp = host.component(stage, name, where=f"{source}: {key}.type: ")
    options = validate_block(source, key, comp.config_class(), block, component_listing(comp.name))
    return StageChoice(stage, comp, options)


class _Problems:
    """Collects the ConfigErrors of independent blocks so a scene file's mistakes are reported
    together instead of one per attempt. ``run(fn)`` returns ``fn()`` or None after an error."""

    def __init__(self, source: str):
        self.source, self.found = source, []

    def run(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BlockErrors as exc:  # several mistakes in one block: one problem each
            self.found += exc.problems if exc.source == self.source else [str(exc)]
            return None
        except ConfigError as exc:
            text = str(exc)
            self.found.append(text[len(self.source) + 2:] if text.startswith(f"{self.source}: ") else text)
            return None

    def add(self, text: str) -> None:
        self.found.append(text)

    def raise_any(self) -> None:
        if self.found:
            raise BlockErrors(self.source, self.found)


def validate(data: dict, host, *, source: str = "<scene>") -> SceneConfig:
    """Validate a scene mapping against the registered components and check the chain.
    Every block is checked; all the problems found are raised together in one ConfigError."""
    problems = _Problems(source)
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        problems.add(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(TOP_LEVEL)}")
    for k in REQUIRED_STAGES:
        if not data.get(k):
            types = ", ".join(c.name for c in host.components(k)) or "none registered"
            problems.add(f"missing required stage {k!r}. Add e.g. `{k}: {{type: ...}}` with one of: {types}")
    for k in ("name", "method"):
        if k in data and not isinstance(data[k], str):
            problems.add(f"{k} = {data[k]!r} must be a string")
    if data.get("description") is not None and not isinstance(data["description"], str):
        problems.add(f"description = {data['description']!r} must be a string (free text; quote it if YAML "
                     f"reads it as something else, e.g. a number, a date or a mapping)")
    stages = {s: (problems.run(lambda s=s: _choice(host, source, s, s, data[s])) if data.get(s) else None)
              for s in SINGLE_STAGES}
    lists: dict[str, list[StageChoice]] = {}
    for key, stage in LIST_STAGES.items():
        items = data.get(key) or []
        if not isinstance(items, list):
            problems.add(f"{key} must be a list of {{type: ...}} blocks, got {items!r}")
            items = []
        lists[key] = [problems.run(lambda i=i, b=b: _choice(host, source, f"{key}.{i}", stage, b))
                      for i, b in enumerate(items)]
    blocks = {k: problems.run(lambda k=k, m=m: validate_block(source, k, m, data.get(k), CONFIG_LISTING))
              for k, m in (("train", TrainConfig), ("eval", EvalConfig), ("output", OutputConfig))}
    reference = problems.run(lambda: validate_reference(source, data.get("reference")))
    problems.raise_any()
    cfg = SceneConfig(
        name=str(data.get("name") or Path(source).stem),
        method=str(data.get("method") or stages["field"].name),
        source=source,
        stages=stages,
        losses=lists["losses"],
        evaluators=lists["evaluators"],
        **blocks,
        description=str(data.get("description") or ""),
        raw=data,
        reference=reference,
    )
    check_chain(cfg, host)
    return cfg


def check_chain(cfg: SceneConfig, host) -> None:
    """Refuse a chain whose produce/consume does not fit, naming what would fit."""
    available: set[str] = set()
    order = [(s, cfg.stages[s]) for s in SINGLE_STAGES] + \
            [(c.stage, c) for c in cfg.losses] + [(c.stage, c) for c in cfg.evaluators]
    for stage, choice in order:
        if choice is None:
            continue
        comp = choice.component
        if not comp.fits(available):
            fitting = [c for c in host.components(stage) if c.fits(available)]
            fit_text = ", ".join(f"{c.name} (plugin {c.plugin})" for c in fitting) or "none"
            listed = {"loss": "losses", "evaluator": "evaluators"}.get(stage)
            fix = (f"Or remove it from {listed}:, or change the stages so that the chain produces what it needs."
                   if listed else "Or add a stage that produces what is missing (e.g. a certifier for "
                   "occupancy->sdf, a density map for sdf->density).")
            raise ConfigError(
                f"{cfg.source}: {stage} {comp.name!r} needs {comp.consumes_text()}, but the chain "
                f"before it only provides {', '.join(sorted(available)) or 'nothing'}. "
                f"{stage} types that fit here: {fit_text}. {fix}")
        available |= set(comp.produces)


def load_scene(path: Path, host, overrides: list[str] = (), data: Optional[Path] = None) -> SceneConfig:
    """Read, override and validate a scene file. Errors that only overrides cause are reported
    against those ``--set`` options, not the file. A data path (a folder, or a file that is not YAML) is
    read as :func:`pipeline.data_scene.data_scene` gives it: the default scene with that data. ``data``
    (``--data``): the scene file's settings on that data instead of its own (:func:`pipeline.data_scene.with_data`)."""
    from pipeline.data_scene import data_scene, is_data_path, with_data

    def detected(p: Path) -> tuple[Optional[str], frozenset]:
        scene_type = host.scene_type_for_path(p)
        return scene_type, (host.component("scene", scene_type).produces if scene_type else frozenset())

    path = Path(path)
    if is_data_path(path):
        if data is not None:
            raise ConfigError(f"--data {data}: {path} is data already; give a scene file (see scenes/) to train "
                              f"its settings on --data, or the data alone for the default settings")
        base = data_scene(path, *detected(path))
    else:
        base = read_yaml(path)
    if data is not None:
        data = Path(data)
        if not data.exists():
            raise ConfigError(f"--data {data}: no such file or folder")
        if not is_data_path(data):
            raise ConfigError(f"--data {data}: a scene file, not data; give a data folder or file "
                              f"(the scene file goes first: nls reconstruct SCENE.yaml --data PATH)")
        base = with_data(base, data, *detected(data))
        path = Path(f"{path} (with --data {data})")
    try:
        data = apply_overrides(base, list(overrides))
    except ConfigError:  # e.g. --set train.steps=N where the file's `train` is a list: the file's mistake first
        validate(base, host, source=str(path))
        raise
    try:
        return validate(data, host, source=str(path))
    except ConfigError as exc:
        culprits = _breaking_overrides(base, list(overrides), host, str(path))
        if not culprits:
            raise
        sets = " ".join(f"--set {o}" for o in culprits)
        raise ConfigError(str(exc).replace(f"{path}: ", f"{sets} (on {path}): ", 1)) from None


def _breaking_overrides(base: dict, overrides: list[str], host, source: str) -> list[str]:
    """The overrides that make a valid ``base`` invalid: each one that fails on its own, or all
    of them when only their combination fails. Empty when ``base`` itself is invalid (the file
    is at fault) or there are no overrides."""
    def fails(extra: list[str]) -> bool:
        try:
            validate(apply_overrides(base, extra), host, source=source)
        except ConfigError:
            return True
        return False

    if not overrides or fails([]):
        return []
    return [o for o in overrides if fails([o])] or list(overrides)


def load_resolved(path: Path, host, overrides: list[str] = ()) -> SceneConfig:
    """Read back a run's ``config.yaml`` (with ``overrides``); options removed since the run was
    made are ignored."""
    _LENIENT[0] = tuple(".".join(parse_override(o)[0]) for o in overrides)
    try:
        return load_scene(path, host, overrides)
    finally:
        _LENIENT[0] = None


def with_defaults(saved: Any, host) -> Any:
    """A checkpoint's ``config`` with the options nls added since it was written filled in with their defaults,
    as they are when the run's config.yaml is read back, so that comparing the two does not take them for edits;
    ``saved`` as it is when it is not a mapping or no longer validates."""
    import copy

    if not isinstance(saved, dict):
        return saved
    try:
        return validate(copy.deepcopy(saved), host, source="the checkpoint's config").to_dict()
    except NLSError:
        return saved


def dump_yaml(data: dict) -> str:
    """``data`` as YAML text, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
