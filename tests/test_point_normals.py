"""The ``point_normals`` loss (IGR's normal term, Gropp et al. 2020, Eq. 3): exact values on a sphere's SDF, the
unoriented form, the gradient it passes back, scenes without normals, and a point file with normals end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.types import ConfigError
from plugins.ngp.config import PointNormalsConfig
from plugins.ngp.losses import PointNormals, build_point_normals


class SphereSystem(torch.nn.Module):
    """sdf(x) = ‖x − c‖ − 0.5 with a learnable centre c (3,); its gradient is the unit outward normal."""

    def __init__(self, centre=(0.0, 0.0, 0.0)):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(centre, dtype=torch.float32))
        self.aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])

    def chain(self, x, dirs):
        return {"sdf": (x - self.c).norm(dim=-1) - 0.5}


def _sphere(n: int, radius: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (radius * d).astype(np.float32), d.astype(np.float32)


def test_the_term_is_zero_for_true_normals_and_two_for_flipped_ones_unless_unoriented():
    points, normals = _sphere(500)
    system = SphereSystem()
    assert float(PointNormals(PointNormalsConfig(), points, normals)(None, None, system).detach()) < 1e-5
    flipped = PointNormals(PointNormalsConfig(weight=0.5), points, -normals)
    assert abs(float(flipped(None, None, system).detach()) - 0.5 * 2.0) < 1e-5  # ‖g − (−g)‖ = 2, weighted
    unoriented = PointNormals(PointNormalsConfig(oriented=False), points, -normals)
    assert float(unoriented(None, None, system).detach()) < 1e-5
    scaled = PointNormals(PointNormalsConfig(), points, 3.0 * normals)  # given normals are made unit
    assert float(scaled(None, None, system).detach()) < 1e-5


def test_the_exact_value_off_centre_and_its_gradient_towards_the_true_centre():
    """With the field's sphere moved off the points' centre, each point's term is ‖(x − c)/‖x − c‖ − n‖; the loss
    matches that computed by hand, and one gradient step on c moves the centre back towards the origin."""
    points, normals = _sphere(400, seed=1)
    system = SphereSystem((0.1, 0.0, 0.0))
    loss = PointNormals(PointNormalsConfig(batch_points=400), points, normals)
    torch.manual_seed(0)
    value = loss(None, None, system)
    torch.manual_seed(0)
    j = torch.randint(0, 400, (400,)).numpy()
    g = points[j] - np.array([0.1, 0.0, 0.0], np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert abs(float(value.detach()) - float(np.linalg.norm(g - normals[j], axis=1).mean())) < 1e-5
    value.backward()
    assert system.c.grad[0] > 0 and abs(float(system.c.grad[1])) < abs(float(system.c.grad[0]))  # descent: c.x falls


def test_zero_length_normals_are_left_out():
    points, normals = _sphere(100)
    normals[:40] = 0.0
    loss = PointNormals(PointNormalsConfig(), points, normals)
    assert len(loss.points) == 60 and float(loss(None, None, SphereSystem()).detach()) < 1e-5


def test_a_scene_without_normals_is_refused_or_skipped_as_asked(capsys):
    points, _ = _sphere(50)
    ctx = SimpleNamespace(scene=SimpleNamespace(points=points, normals=None))
    with pytest.raises(ConfigError, match=r"point_normals needs the scene's points with normals, and this scene has "
                                          r"no normals: give a .ply with nx/ny/nz"):
        build_point_normals(PointNormalsConfig(), ctx)
    skipped = build_point_normals(PointNormalsConfig(if_missing="skip"), ctx)
    assert float(skipped(None, None, SphereSystem()).detach()) == 0.0
    assert "point_normals: the scene has no normals; training without the normal term" in capsys.readouterr().err
    zeros = SimpleNamespace(scene=SimpleNamespace(points=points, normals=np.zeros_like(points)))
    with pytest.raises(ConfigError, match="this scene has only zero-length normals"):
        build_point_normals(PointNormalsConfig(), zeros)


def test_a_point_file_with_normals_trains_with_the_normal_term(tmp_path):
    """``nls reconstruct cloud.ply`` with nx/ny/nz and no faces: the default point scene's normal term is active (it
    is logged and not zero); the same cloud as .xyz without normals trains without it."""
    import trimesh

    from pipeline.cli import main

    points, normals = _sphere(2000)
    with_normals = tmp_path / "ball.ply"
    cloud = trimesh.Trimesh(vertices=points, faces=np.zeros((0, 3), int), vertex_normals=normals, process=False)
    with_normals.write_bytes(trimesh.exchange.ply.export_ply(cloud, encoding="binary", vertex_normal=True))
    bare = tmp_path / "bare.xyz"
    np.savetxt(bare, points)
    for cloud in (with_normals, bare):
        assert main(["reconstruct", str(cloud), "--steps", "4", "--no-eval", "-q", "--output", str(tmp_path / "runs"),
                     "--set", "train.log_every=1"]) == 0
    logs = {}
    for name in ("ball", "bare"):
        [metrics] = (tmp_path / "runs" / name).glob("*/*/metrics.jsonl")
        logs[name] = [json.loads(line) for line in metrics.read_text().splitlines()]
    term = [k for k in logs["ball"][0] if k.startswith("loss/") and k.endswith("point_normals")]
    assert term and all(row[term[0]] > 0 for row in logs["ball"]), logs["ball"][0]
    assert all(row[term[0]] == 0 for row in logs["bare"])


def test_normals_of_random_sign_are_used_without_their_sign_with_a_warning(capsys):
    """A sphere's normals with random signs (as PCA gives them) agree with their neighbours about half the time;
    the term then ignores the sign (zero on the sphere's SDF) and says why. Oriented ones agree all the time."""
    from plugins.ngp.losses import normal_sign_agreement

    points, normals = _sphere(3000, seed=2)
    flips = np.where(np.random.default_rng(3).random(3000) < 0.5, -1.0, 1.0).astype(np.float32)[:, None]
    assert normal_sign_agreement(points, normals) > 0.99
    assert 0.4 < normal_sign_agreement(points, flips * normals) < 0.6
    ctx = SimpleNamespace(scene=SimpleNamespace(points=points, normals=flips * normals))
    loss = build_point_normals(PointNormalsConfig(), ctx)
    assert not loss.cfg.oriented and float(loss(None, None, SphereSystem()).detach()) < 1e-5
    assert "point_normals: the normals look unoriented" in capsys.readouterr().err
    oriented = build_point_normals(PointNormalsConfig(), SimpleNamespace(scene=SimpleNamespace(points=points,
                                                                                                normals=normals)))
    assert oriented.cfg.oriented


def test_normals_pointing_into_the_object_are_warned_about_and_kept(capsys):
    """A sphere's outward normals all point away from its centre, its inward ones none, and a flat box's surface
    samples fall on either side of INWARD_SHARE the same way. Inward oriented normals get a warning, and stay
    oriented (a room's inside has them rightly)."""
    import trimesh

    from plugins.ngp.losses import INWARD_SHARE, outward_share

    points, normals = _sphere(2000, seed=4)
    assert outward_share(points, normals) == 1.0 and outward_share(points, -normals) == 0.0
    ctx = SimpleNamespace(scene=SimpleNamespace(points=points, normals=normals))
    build_point_normals(PointNormalsConfig(), ctx)
    assert "towards the cloud's centre" not in capsys.readouterr().err
    loss = build_point_normals(PointNormalsConfig(), SimpleNamespace(scene=SimpleNamespace(points=points,
                                                                                           normals=-normals)))
    err = capsys.readouterr().err
    assert "point_normals: 100% of the normals point towards the cloud's centre" in err and loss.cfg.oriented
    box = trimesh.creation.box(extents=(1.0, 0.2, 0.5))  # flat: still most normals point away from the centre
    pts, face = trimesh.sample.sample_surface(box, 5000, seed=0)
    pts, nrm = np.asarray(pts), np.asarray(box.face_normals[face])
    assert outward_share(pts, nrm) > 1 - INWARD_SHARE and outward_share(pts, -nrm) < INWARD_SHARE
