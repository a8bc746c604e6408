"""The template mesh: a box-modelled quad cage, subdivided by Catmull-Clark, projected onto the
implicit surface and triangulated into one closed, outward-oriented manifold."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from cemr.body.synthetic.surface import _field_and_gradient, _project_to_surface


class _Cage:
    """A closed quad mesh grown by face extrusion; faces are counter-clockwise seen from outside."""

    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[list[int]] = []

    def add(self, p) -> int:
        self.verts.append(np.asarray(p, dtype=np.float64))
        return len(self.verts) - 1

    def normal(self, face: int) -> np.ndarray:
        a, b, c, d = (self.verts[i] for i in self.faces[face])
        n = np.cross(c - a, d - b)
        return n / np.linalg.norm(n)

    def extrude(self, face: int, centre, half1: float, half2: float) -> list[int]:
        """Move `face` to a rectangle (centre, half sizes along its own two in-plane axes).

        The two axes are the world axes in the face plane, so the rectangle keeps the face's corner
        order. Returns the four new side faces; the cap keeps the index `face`.
        """
        normal = self.normal(face)
        axes = [np.eye(3)[k] for k in np.argsort(np.abs(normal))[:2]]
        old = [self.verts[i] for i in self.faces[face]]
        mid = np.mean(old, axis=0)
        new = [
            self.add(np.asarray(centre) + np.sign((p - mid) @ axes[0]) * half1 * axes[0]
                     + np.sign((p - mid) @ axes[1]) * half2 * axes[1])
            for p in old
        ]  # fmt: skip
        ring = self.faces[face]
        sides = []
        for k in range(4):
            self.faces.append([ring[k], ring[(k + 1) % 4], new[(k + 1) % 4], new[k]])
            sides.append(len(self.faces) - 1)
        self.faces[face] = new
        return sides

    def side_facing(self, faces: list[int], direction) -> int:
        return max(faces, key=lambda f: self.normal(f) @ np.asarray(direction, dtype=np.float64))


def _half_sizes(cage: _Cage, face: int, sizes: dict[int, float]) -> tuple[float, float]:
    """Order half sizes {world axis: size} like `_Cage.extrude` orders the face's two axes."""
    axes = np.argsort(np.abs(cage.normal(face)))[:2]
    return sizes[axes[0]], sizes[axes[1]]


def _build_cage() -> tuple[np.ndarray, np.ndarray]:
    """(V0, 3) vertices and (Q, 4) quads of the coarse humanoid cage (x: 0, y: 1, z: 2 below)."""
    cage = _Cage()
    # Torso: a box with 3 columns in x (right leg | crotch | left leg at the bottom,
    # right shoulder | neck | left shoulder at the top), 5 rows in y, front and back in z.
    levels = [  # y, outer half-width a, inner half-width b, half-depth d
        (-0.37, 0.15, 0.02, 0.08), (-0.27, 0.16, 0.05, 0.10), (-0.12, 0.135, 0.05, 0.095),
        (0.03, 0.145, 0.05, 0.105), (0.16, 0.16, 0.05, 0.095), (0.27, 0.17, 0.045, 0.06),
    ]  # fmt: skip
    rings = []
    for y, a, b, d in levels:
        xz = [(-a, d), (-b, d), (b, d), (a, d), (a, -d), (b, -d), (-b, -d), (-a, -d)]
        rings.append([cage.add((x, y, z)) for x, z in xz])
    side_faces = {}
    for lo, up in zip(rings[:-1], rings[1:], strict=True):
        for i in range(8):
            cage.faces.append([lo[i], lo[(i + 1) % 8], up[(i + 1) % 8], up[i]])
            side_faces[i] = len(cage.faces) - 1  # ends as the top row
    bottom, top = rings[0], rings[-1]
    cage.faces += [[bottom[5], bottom[4], bottom[3], bottom[2]], [bottom[6], bottom[5], bottom[2], bottom[1]],
                   [bottom[7], bottom[6], bottom[1], bottom[0]]]  # fmt: skip
    left_leg, right_leg = len(cage.faces) - 3, len(cage.faces) - 1
    cage.faces += [[top[2], top[3], top[4], top[5]], [top[1], top[2], top[5], top[6]]]
    neck = len(cage.faces) - 1
    cage.faces.append([top[0], top[1], top[6], top[7]])
    left_arm, right_arm = side_faces[3], side_faces[7]

    for sign, leg in ((1.0, left_leg), (-1.0, right_leg)):
        sides = []
        for y, x, z, hx, hz in [
            (-0.47, 0.085, 0.005, 0.075, 0.08), (-0.58, 0.087, 0.005, 0.068, 0.072),
            (-0.70, 0.09, 0.005, 0.052, 0.055), (-0.83, 0.09, -0.005, 0.05, 0.055),
            (-0.96, 0.09, -0.015, 0.04, 0.045), (-1.06, 0.09, -0.03, 0.035, 0.04),
            (-1.155, 0.09, -0.03, 0.038, 0.045),
        ]:  # fmt: skip
            sides = cage.extrude(leg, (sign * x, y, z), *_half_sizes(cage, leg, {0: hx, 2: hz}))
        foot = cage.side_facing(sides, (0, 0, 1))  # front of the heel block
        for z, x, y, hx, hy in [(0.08, 0.095, -1.135, 0.042, 0.028), (0.205, 0.10, -1.152, 0.04, 0.016)]:
            cage.extrude(foot, (sign * x, y, z), *_half_sizes(cage, foot, {0: hx, 1: hy}))

    for sign, arm in ((1.0, left_arm), (-1.0, right_arm)):
        hand_sides = []
        for x, y, z, hy, hz in [
            (0.24, 0.225, -0.02, 0.05, 0.05), (0.34, 0.22, -0.025, 0.045, 0.045),
            (0.44, 0.215, -0.03, 0.04, 0.04), (0.55, 0.215, -0.028, 0.035, 0.035),
            (0.64, 0.215, -0.026, 0.03, 0.03), (0.70, 0.214, -0.025, 0.022, 0.04),
            (0.76, 0.212, -0.022, 0.02, 0.045), (0.82, 0.207, -0.025, 0.016, 0.042),
            (0.895, 0.207, -0.025, 0.012, 0.035),
        ]:  # fmt: skip
            sides = cage.extrude(arm, (sign * x, y, z), *_half_sizes(cage, arm, {1: hy, 2: hz}))
            if x == 0.76:
                hand_sides = sides
        thumb = cage.side_facing(hand_sides, (0, 0, 1))
        for x, y, z, hx, hy in [(0.735, 0.205, 0.045, 0.015, 0.012), (0.785, 0.2, 0.085, 0.012, 0.01)]:
            cage.extrude(thumb, (sign * x, y, z), *_half_sizes(cage, thumb, {0: hx, 1: hy}))

    for y, z, hx, hz in [(0.33, -0.01, 0.05, 0.05), (0.38, 0.03, 0.065, 0.075), (0.45, 0.025, 0.08, 0.095),
                         (0.50, 0.02, 0.07, 0.08), (0.545, 0.015, 0.045, 0.05)]:  # fmt: skip
        cage.extrude(neck, (0.0, y, z), *_half_sizes(cage, neck, {0: hx, 2: hz}))
    return np.array(cage.verts), np.array(cage.faces, dtype=np.int64)


def _catmull_clark(verts: np.ndarray, quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Catmull-Clark step of a closed quad mesh: (V, 3), (F, 4) -> (V + E + F, 3), (4F, 4)."""
    n_verts, n_faces = len(verts), len(quads)
    face_pts = verts[quads].mean(axis=1)
    directed = np.stack([quads, np.roll(quads, -1, axis=1)], axis=-1).reshape(-1, 2)  # edge k: v_k -> v_k+1
    edges, edge_of = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True)
    edge_of = edge_of.reshape(-1)
    if np.bincount(edge_of, minlength=len(edges)).max(initial=2) != 2 or len(edge_of) != 2 * len(edges):
        raise RuntimeError("Catmull-Clark needs a closed manifold quad mesh (every edge in two faces)")
    face_sum = np.zeros((len(edges), 3))
    np.add.at(face_sum, edge_of, face_pts[np.arange(4 * n_faces) // 4])
    edge_pts = (verts[edges[:, 0]] + verts[edges[:, 1]] + face_sum) / 4.0

    valence = np.bincount(edges.reshape(-1), minlength=n_verts).astype(np.float64)[:, None]
    face_avg = np.zeros((n_verts, 3))
    np.add.at(face_avg, quads.reshape(-1), np.repeat(face_pts, 4, axis=0))
    mid_avg = np.zeros((n_verts, 3))
    mids = verts[edges].mean(axis=1)
    np.add.at(mid_avg, edges[:, 0], mids)
    np.add.at(mid_avg, edges[:, 1], mids)
    moved = (face_avg / valence + 2.0 * mid_avg / valence + (valence - 3.0) * verts) / valence

    e = n_verts + edge_of.reshape(n_faces, 4)  # e[:, k] is the edge v_k -> v_k+1
    f = n_verts + len(edges) + np.arange(n_faces)
    new_quads = np.stack(
        [np.stack([quads[:, k], e[:, k], f, e[:, (k - 1) % 4]], axis=1) for k in range(4)], axis=1
    ).reshape(-1, 4)
    return np.concatenate([moved, edge_pts, face_pts]), new_quads


def _neighbour_matrix(n_verts: int, faces: np.ndarray) -> scipy.sparse.csr_matrix:
    """(V, V) row-stochastic matrix averaging each vertex's mesh neighbours."""
    edges = np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2)
    adj = scipy.sparse.coo_matrix(
        (np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
        shape=(n_verts, n_verts),
    ).tocsr()
    adj.data[:] = 1.0
    return scipy.sparse.diags(1.0 / np.asarray(adj.sum(axis=1)).ravel()) @ adj


def _triangulate(verts: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Split each quad (a, b, c, d) along its shorter diagonal, keeping the orientation."""
    a, b, c, d = quads.T
    along_ac = np.linalg.norm(verts[a] - verts[c], axis=1) <= np.linalg.norm(verts[b] - verts[d], axis=1)
    first = np.where(along_ac[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    second = np.where(along_ac[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.stack([first, second], axis=1).reshape(-1, 3)


def _build_mesh(parts) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices on the body surface and (F, 3) outward-oriented triangles."""
    verts, quads = _build_cage()
    for _ in range(2):
        verts, quads = _catmull_clark(verts, quads)
    verts = _project_to_surface(parts, verts, iterations=12)
    neighbours = _neighbour_matrix(len(verts), quads)
    for _ in range(3):  # even out the spacing along the surface, then project back
        normal = _field_and_gradient(parts, verts)[1]
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        delta = neighbours @ verts - verts
        verts = verts + 0.5 * (delta - (delta * normal).sum(axis=1, keepdims=True) * normal)
        verts = _project_to_surface(parts, verts, iterations=3)
    faces = _triangulate(verts, quads)
    # Every triangle must face away from the body (no fold from the projection).
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if (np.einsum("ij,ij->i", normals, _field_and_gradient(parts, tri.mean(axis=1))[1]) <= 0).any():
        raise RuntimeError("procedural body mesh has inward-facing triangles")
    return verts, faces
