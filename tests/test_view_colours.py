"""Colours baked from the training views (:mod:`pipeline.view_colours`): which cameras see a vertex (in their
image, facing them, not hidden by the mesh), against what a convex sphere's geometry says exactly, and the colour a
view-dependent field gives there, the mean over the seeing cameras' ray directions."""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh

from pipeline.mesh import bake_vertex_colors
from pipeline.system import FieldChain
from pipeline.types import Cameras
from pipeline.view_colours import seeing_views, view_colour, view_subset


class DirectionColour(torch.nn.Module):
    """A sphere of radius 0.3 whose colour is the viewing direction shifted into [0, 1]: rgb = (d + 1) / 2."""

    def forward(self, x, d=None):
        out = {"sdf": x.norm(dim=-1) - 0.3}
        if d is not None:
            out["rgb"] = (d + 1) / 2
        return out


def _looking_at_origin(eyes, fov_deg: float = 60.0, size: int = 64) -> Cameras:
    """Cameras at ``eyes`` (N, 3), each looking at the origin (Blender axes: -z forward), ``fov_deg`` wide."""
    c2w = torch.zeros(len(eyes), 4, 4, dtype=torch.float64)
    for i, eye in enumerate(torch.as_tensor(eyes, dtype=torch.float64)):
        back = eye / eye.norm()
        helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        if abs(float(back @ helper)) > 0.9:
            helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        right = torch.linalg.cross(helper, back)
        right = right / right.norm()
        c2w[i, :3, :3] = torch.stack([right, torch.linalg.cross(back, right), back], 1)
        c2w[i, :3, 3] = eye
        c2w[i, 3, 3] = 1
    f = torch.full((len(eyes),), 0.5 * size / math.tan(math.radians(fov_deg) / 2), dtype=torch.float64)
    c = torch.full((len(eyes),), size / 2, dtype=torch.float64)
    return Cameras(c2w, f, f, c, c, size, size)


def _sphere(radius: float = 0.3, centre=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    mesh.apply_translation(centre)
    return mesh


def test_a_convex_sphere_is_seen_where_it_faces_the_camera():
    """One camera 2 units out on +x, the whole sphere in its image: a vertex is seen when it faces the camera
    ((p - c) . n < 0, the horizon of a convex body), except within a band of the horizon where the occlusion test's
    tolerance decides; nothing on the far side."""
    mesh = _sphere()
    cams = _looking_at_origin([[2.0, 0.0, 0.0]])
    seen = seeing_views(mesh, cams).vertex[:, 0]
    p, n = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    facing = np.einsum("ij,ij->i", p - np.array([2.0, 0, 0]), n) / np.linalg.norm(p - [2.0, 0, 0], axis=1)
    assert seen[facing < -0.2].all() and not seen[facing > 0].any()
    assert 0.3 < seen.mean() < 0.5  # a camera 2 units out sees less than half of a sphere of radius 0.3


def test_the_mesh_hides_what_lies_behind_it_and_the_image_crops():
    """A second sphere between the camera and the first hides the first's middle; a narrow field of view sees only
    the vertices whose projection falls in the image."""
    target = _sphere()
    blocker = _sphere(0.1, (0.8, 0.0, 0.0))
    both = trimesh.util.concatenate([target, blocker])
    cams = _looking_at_origin([[2.0, 0.0, 0.0]])
    seen = seeing_views(both, cams).vertex[: len(target.vertices), 0]
    p = np.asarray(target.vertices)
    rel = p - np.array([2.0, 0, 0])
    towards = rel / np.linalg.norm(rel, axis=1, keepdims=True)
    # the blocker (radius 0.1 at 1.2 from the camera) covers directions within asin(0.1 / 1.2) of the axis
    facing = np.einsum("ij,ij->i", towards, np.asarray(target.vertex_normals)) < -0.5
    behind = facing & (np.degrees(np.arccos(-towards[:, 0])) < math.degrees(math.asin(0.1 / 1.2)) - 0.5)
    assert behind.sum() > 10 and not seen[behind].any()
    alone = seeing_views(target, cams).vertex[:, 0]
    assert alone[behind].all()  # without the blocker the same vertices are seen
    narrow = seeing_views(target, _looking_at_origin([[2.0, 0.0, 0.0]], fov_deg=4.0)).vertex[:, 0]
    half = math.radians(2.0)  # the square image's half-width as an angle off the axis (its corners: sqrt 2 that)
    off_axis = np.arctan2(np.hypot(p[:, 1], p[:, 2]), 2.0 - p[:, 0])
    assert not narrow[off_axis > math.sqrt(2) * half * 1.01].any()
    assert facing[off_axis < 0.7 * half].sum() > 3 and narrow[facing & (off_axis < 0.7 * half)].all()


def test_a_view_dependent_field_is_baked_as_its_seeing_cameras_saw_it():
    """rgb = (d + 1) / 2 with two cameras, on +x and on +y: a vertex seen by both gets the mean of their two ray
    directions' colours, one seen by one gets that one's, and one that neither sees (the far side) the colour
    along its inward normal."""
    mesh = _sphere()
    eyes = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    cams = _looking_at_origin(eyes)
    chain = FieldChain(DirectionColour())
    rgb = bake_vertex_colors(mesh, chain, "cpu", cameras=cams)
    seen = seeing_views(mesh, cams).vertex
    p, n = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    dirs = [(p - e) / np.linalg.norm(p - e, axis=1, keepdims=True) for e in eyes]
    expected = np.where(seen[:, :1], (dirs[0] + 1) / 2, 0) + np.where(seen[:, 1:], (dirs[1] + 1) / 2, 0)
    count = seen.sum(1, keepdims=True)
    expected = np.where(count > 0, expected / np.maximum(count, 1), (-n / np.linalg.norm(n, axis=1, keepdims=True)
                                                                     + 1) / 2)
    assert (count == 2).any() and (count == 1).any() and (count == 0).any()
    assert np.allclose(rgb, expected, atol=1e-5)
    stored = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255
    assert np.abs(stored - expected).max() <= 0.5 / 255 + 1e-6
    normal = bake_vertex_colors(mesh.copy(), chain, "cpu")  # without cameras: the inward normal everywhere
    assert np.allclose(normal, (-n / np.linalg.norm(n, axis=1, keepdims=True) + 1) / 2, atol=1e-5)


def test_at_most_the_stated_number_of_cameras_spread_over_the_set():
    """All cameras up to the cap; past it exactly the cap, spread by farthest-point sampling: a path that
    lingers (90 frames close together, 10 along the rest of a line) keeps its far frames, which every k-th frame
    would thin to three; a ring is picked evenly; a tripod's cameras, one centre, are told apart by their axes;
    copies of one camera are picked once."""
    line = _looking_at_origin([[x, 3.0, 0.5] for x in [*np.linspace(1, 1.09, 90), *np.linspace(2, 11, 10)]])
    assert view_subset(line.select(list(range(10))), 32) == list(range(10))
    picked = view_subset(line, 12)
    assert len(picked) == 12 and picked == sorted(set(picked)) and set(range(90, 100)) <= set(picked)
    ring = _looking_at_origin([[2 * math.cos(a), 2 * math.sin(a), 0.3]
                               for a in np.linspace(0, 2 * math.pi, 120, endpoint=False)])
    spread = ring.c2w[view_subset(ring, 8), :3, 3].numpy()
    gaps = np.linalg.norm(spread[:, None] - spread[None], axis=-1) + np.eye(8) * 9
    assert gaps.min() > 1.5  # an even eighth of a circle of radius 2 is 1.53 apart
    tripod = _looking_at_origin([[2 * math.cos(a), 2 * math.sin(a), 0.0] for a in np.linspace(0, 6, 40)])
    tripod.c2w[:, :3, 3] = 0.0  # every camera at the origin, each turned its own way
    assert len(view_subset(tripod, 8)) == 8 and len(set(view_subset(tripod, 8))) == 8
    copies = _looking_at_origin([[2.0, 0.0, 0.5]] * 40)
    assert view_subset(copies, 8) == [0]
    ring = _looking_at_origin([[2 * math.cos(a), 2 * math.sin(a), 0.3] for a in np.linspace(0, 6, 40)])
    assert seeing_views(_sphere(), ring, most=8).vertex.shape[1] == 8


def test_without_seeing_cameras_the_colour_is_the_inward_normals():
    """view_colour with no views, or views that see nothing, gives the inward-normal colour."""
    mesh = _sphere()
    chain = FieldChain(DirectionColour())
    p, n = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    away = _looking_at_origin([[2.0, 0.0, 0.0]])
    away.c2w[0, :3, :3] = -away.c2w[0, :3, :3]  # turned to look away from the sphere
    views = seeing_views(mesh, away)
    assert not views.vertex.any()
    out = view_colour(chain, p, n, "cpu", views=views, seen=views.vertex)
    assert np.allclose(out, (-n / np.linalg.norm(n, axis=1, keepdims=True) + 1) / 2, atol=1e-5)


class PositionColour(torch.nn.Module):
    """A sphere of radius 0.3 whose colour does not depend on the view: rgb = x + 0.5."""

    def forward(self, x, d=None):
        out = {"sdf": x.norm(dim=-1) - 0.3}
        if d is not None:
            out["rgb"] = (x + 0.5).clamp(0, 1)
        return out


def test_a_colour_that_does_not_depend_on_the_view_is_baked_alike_either_way():
    """For a field whose colour ignores the direction, the mean over the seeing cameras is that colour: the baked
    vertex colours from a ring of cameras equal the inward normal's (and the position's, x + 0.5)."""
    mesh = _sphere()
    ring = _looking_at_origin([[2 * math.cos(a), 2 * math.sin(a), 0.8] for a in np.linspace(0, 6, 12)])
    chain = FieldChain(PositionColour())
    views = bake_vertex_colors(mesh.copy(), chain, "cpu", cameras=ring)
    normal = bake_vertex_colors(mesh.copy(), chain, "cpu")
    assert np.allclose(views, normal, atol=1e-6)
    assert np.allclose(views, np.clip(np.asarray(mesh.vertices) + 0.5, 0, 1), atol=1e-6)
