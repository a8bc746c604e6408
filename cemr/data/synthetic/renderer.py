"""Headless numpy renderer: z-buffered triangle rasterization, smooth Lambert shading, environment.

Pixel convention as in `cemr.geometry`: 0-based, integer coordinates are pixel centres, so a
camera-frame point X (OpenCV axes: x right, y down, z forward) lands at
u = f X_x / X_z + c_x, v = f X_y / X_z + c_y, the same formula the 2D keypoint labels use.

Rasterization is vectorised over all triangles at once: each triangle's pixel bounding box is
expanded into candidate pixel centres, barycentric coordinates reject the outside ones, and the
nearest candidate per pixel wins (sort by pixel, then depth). Interpolation is perspective-correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse


@dataclass
class Camera:
    """Pinhole camera of one frame: world -> camera X_c = R X_w + t; principal point (cx, cy)."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    focal: float
    width: int
    height: int
    cx: float
    cy: float

    def scaled(self, factor: int) -> Camera:
        """The same view on a `factor` times finer grid (pixel centre i -> factor i + (factor - 1) / 2)."""
        offset = 0.5 * (factor - 1)
        return Camera(
            self.rotation,
            self.translation,
            self.focal * factor,
            self.width * factor,
            self.height * factor,
            self.cx * factor + offset,
            self.cy * factor + offset,
        )

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points -> (..., 3) (u, v, z): pixels and depth in metres."""
        z = points_cam[..., 2]
        u = self.focal * points_cam[..., 0] / z + self.cx
        v = self.focal * points_cam[..., 1] / z + self.cy
        return np.stack([u, v, z], axis=-1)


@dataclass
class Mesh:
    """Triangles in the camera frame with per-vertex albedo (RGB in [0, 1])."""

    vertices: np.ndarray  # (V, 3) metres, camera frame
    faces: np.ndarray  # (F, 3) int
    albedo: np.ndarray  # (V, 3)
    normals: np.ndarray | None = None  # (V, 3); None: smooth normals from the faces


@dataclass
class Light:
    """Ambient + one directional light; `direction` points from the scene towards the light."""

    direction: np.ndarray  # (3,) unit
    color: np.ndarray  # (3,) RGB intensity of the directional light
    ambient: np.ndarray  # (3,) RGB ambient intensity

    def rotated(self, rotation: np.ndarray) -> Light:
        """The light in another frame, e.g. world -> camera with the camera's rotation (3, 3)."""
        return Light(rotation @ self.direction, self.color, self.ambient)


@dataclass
class Fragments:
    """Per-pixel rasterization result; empty pixels have face -1 and depth inf."""

    face: np.ndarray  # (H, W) int64
    bary: np.ndarray  # (H, W, 3) perspective-correct barycentric weights
    depth: np.ndarray  # (H, W) metres


def _min3(a: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(a[:, 0], a[:, 1]), a[:, 2])  # much faster than a.min(1) for (n, 3)


def _max3(a: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), a[:, 2])


def rasterize(
    points_px: np.ndarray, faces: np.ndarray, width: int, height: int, near: float = 1e-2
) -> Fragments:
    """Z-buffer rasterization of triangles at pixel centres.

    points_px (V, 3): (u, v, z) pixels and depth; faces (F, 3). Triangles with a vertex closer
    than `near` are skipped (no clipping; nothing rendered here straddles the camera plane).
    """
    tri = points_px[faces]  # (F, 3, 3)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    x0 = np.maximum(np.ceil(_min3(x)), 0).astype(np.int64)
    x1 = np.minimum(np.floor(_max3(x)), width - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(_min3(y)), 0).astype(np.int64)
    y1 = np.minimum(np.floor(_max3(y)), height - 1).astype(np.int64)
    # twice the signed area; edge functions below are divided by it, so winding does not matter
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    keep = (x1 >= x0) & (y1 >= y0) & (_min3(z) > near) & (np.abs(area) > 1e-12)
    ids = np.flatnonzero(keep)
    box_w = (x1 - x0 + 1)[ids]
    counts = box_w * (y1 - y0 + 1)[ids]
    face = np.repeat(ids, counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    w = np.repeat(box_w, counts)
    px = x0[face] + local % w
    py = y0[face] + local // w

    # barycentric weight of vertex k = edge function of the opposite edge / area
    xs, ys, a = x[face], y[face], area[face]
    bary = np.empty((3, face.size))
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        bary[k] = ((xs[:, j] - xs[:, i]) * (py - ys[:, i]) - (ys[:, j] - ys[:, i]) * (px - xs[:, i])) / a
    inside = (bary[0] >= -1e-9) & (bary[1] >= -1e-9) & (bary[2] >= -1e-9)
    face, px, py, bary = face[inside], px[inside], py[inside], bary[:, inside]
    inv_z = bary / z[face].T  # (3, n); 1/z is affine in screen space
    inv_depth = inv_z[0] + inv_z[1] + inv_z[2]

    pixel = py * width + px
    order = np.lexsort((-inv_depth, pixel))  # by pixel, nearest first; stable for exact ties
    first = np.ones(order.size, dtype=bool)
    first[1:] = pixel[order[1:]] != pixel[order[:-1]]
    win = order[first]

    out_face = np.full(height * width, -1, dtype=np.int64)
    out_bary = np.zeros((height * width, 3))
    out_depth = np.full(height * width, np.inf)
    out_face[pixel[win]] = face[win]
    out_bary[pixel[win]] = (inv_z[:, win] / inv_depth[win]).T
    out_depth[pixel[win]] = 1.0 / inv_depth[win]
    return Fragments(
        out_face.reshape(height, width), out_bary.reshape(height, width, 3), out_depth.reshape(height, width)
    )


class VertexNormals:
    """Area-weighted smooth vertex normals for a fixed triangle topology (one sparse product per frame)."""

    def __init__(self, faces: np.ndarray, num_vertices: int) -> None:
        num_faces = faces.shape[0]
        self.faces = faces
        self.incidence = scipy.sparse.csr_matrix(
            (np.ones(3 * num_faces), (faces.reshape(-1), np.repeat(np.arange(num_faces), 3))),
            shape=(num_vertices, num_faces),
        )

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) -> (V, 3) unit normals (orientation follows the face winding)."""
        tri = vertices[self.faces]
        face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals = self.incidence @ face_normals
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def merge_meshes(meshes: list[Mesh]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate meshes -> vertices (V, 3), faces (F, 3), albedo (V, 3), normals (V, 3), mesh id (F,)."""
    offsets = np.cumsum([0] + [m.vertices.shape[0] for m in meshes])
    faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets[:-1], strict=True)])
    normals = [
        m.normals if m.normals is not None else VertexNormals(m.faces, len(m.vertices))(m.vertices)
        for m in meshes
    ]
    mesh_of_face = np.concatenate([np.full(len(m.faces), i) for i, m in enumerate(meshes)])
    return (
        np.concatenate([m.vertices for m in meshes]),
        faces,
        np.concatenate([m.albedo for m in meshes]),
        np.concatenate(normals),
        mesh_of_face,
    )


@dataclass
class Rendering:
    image: np.ndarray  # (H, W, 3) float RGB, linear in [0, ~1]
    mesh_id: np.ndarray  # (H, W) int, index into the rendered mesh list, -1 = background
    depth: np.ndarray  # (H, W) metres, inf = background


def render(meshes: list[Mesh], camera: Camera, light: Light, background: np.ndarray) -> Rendering:
    """Shade the meshes over `background` (H, W, 3): two-sided Lambert, perspective-correct smooth normals
    and albedo."""
    vertices, faces, albedo, normals, mesh_of_face = merge_meshes(meshes)
    frags = rasterize(camera.project(vertices), faces, camera.width, camera.height)
    hit = frags.face >= 0
    tri = faces[frags.face[hit]]  # (n, 3)
    bary = frags.bary[hit]
    color = np.einsum("nk,nkc->nc", bary, albedo[tri])
    normal = np.einsum("nk,nkc->nc", bary, normals[tri])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    # two-sided: turn every normal towards the camera (the view ray at the pixel is ~ +z)
    rows, cols = np.nonzero(hit)  # the same row-major order as boolean indexing
    ray = np.stack(
        [(cols - camera.cx) / camera.focal, (rows - camera.cy) / camera.focal, np.ones(len(rows))], 1
    )
    normal *= -np.sign((normal * ray).sum(1, keepdims=True) + 1e-12)
    diffuse = np.clip(normal @ light.direction, 0.0, None)[:, None]
    image = background.copy()
    image[hit] = color * (light.ambient + diffuse * light.color)
    mesh_id = np.full(hit.shape, -1)
    mesh_id[hit] = mesh_of_face[frags.face[hit]]
    return Rendering(image, mesh_id, frags.depth)


@dataclass
class Environment:
    """Static surroundings: a textured floor (y = 0, world +y up) and an equirectangular backdrop.

    floor_texture (h, w, 3) float covers `floor_texel_m` metres per texel and repeats; panorama
    (h, w, 3) float spans azimuth [-pi, pi) left to right and elevation `elev_range_rad` = (lowest,
    highest) bottom to top. Beyond `floor_fade_m` the floor fades into the backdrop (haze).
    """

    floor_texture: np.ndarray
    floor_texel_m: float
    panorama: np.ndarray
    elev_range_rad: tuple[float, float] = (-0.6, 1.2)
    floor_fade_m: float = 25.0
    shadow_strength: float = 0.4
    props: tuple[Mesh, ...] = ()  # world-frame meshes (converted per frame)


class EnvironmentRenderer:
    """Draws an `Environment` for a camera; the per-pixel geometry is reused while the camera stays put."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self._key = None

    def __call__(self, camera: Camera, shadow_xz: np.ndarray | None = None) -> np.ndarray:
        """(H, W, 3) float background; a soft contact shadow on the floor under `shadow_xz` (2,) metres."""
        key = (
            camera.rotation.tobytes(),
            camera.translation.tobytes(),
            camera.focal,
            camera.width,
            camera.height,
            camera.cx,
            camera.cy,
        )
        if key != self._key:
            self._base, self._floor_xz, self._floor_rgb = self._view(camera)
            self._key = key
        if shadow_xz is None or self._floor_xz is None:
            return self._base.copy()
        d2 = ((self._floor_xz - shadow_xz) ** 2).sum(-1)
        return self._base - self.env.shadow_strength * np.exp(-d2 / 0.12)[..., None] * self._floor_rgb

    def _view(self, camera: Camera) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Image without shadow, floor hit points (H, W, 2) (x, z) and the visible floor colour (H, W, 3)."""
        env = self.env
        cols, rows = np.meshgrid(
            np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64)
        )
        rays_cam = np.stack(
            [(cols - camera.cx) / camera.focal, (rows - camera.cy) / camera.focal, np.ones_like(cols)], -1
        )
        rays = rays_cam @ camera.rotation  # R^T d for row vectors: world directions
        eye = -camera.rotation.T @ camera.translation

        azimuth = np.arctan2(rays[..., 0], rays[..., 2])
        elevation = np.arctan2(rays[..., 1], np.hypot(rays[..., 0], rays[..., 2]))
        pano_h, pano_w = env.panorama.shape[:2]
        lo, hi = env.elev_range_rad
        map_x = ((azimuth + np.pi) / (2 * np.pi) * pano_w - 0.5).astype(np.float32)
        map_y = np.clip((hi - elevation) / (hi - lo) * pano_h - 0.5, 0, pano_h - 1).astype(np.float32)
        image = cv2.remap(
            env.panorama.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        ).astype(np.float64)

        down = rays[..., 1] < -1e-6
        dist = np.where(down, -eye[1] / np.where(down, rays[..., 1], -1.0), np.inf)  # ray length to y = 0
        floor = down & (dist < env.floor_fade_m * 2)
        if not floor.any():
            return image, None, np.zeros_like(image)
        dist = np.where(floor, dist, 0.0)
        floor_xz = np.stack([eye[0] + dist * rays[..., 0], eye[2] + dist * rays[..., 2]], -1)
        tex_h, tex_w = env.floor_texture.shape[:2]
        map_x = np.mod(floor_xz[..., 0] / env.floor_texel_m, tex_w).astype(np.float32)
        map_y = np.mod(floor_xz[..., 1] / env.floor_texel_m, tex_h).astype(np.float32)
        floor_rgb = cv2.remap(
            env.floor_texture.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        ).astype(np.float64)
        near = (1.0 - np.clip((dist - env.floor_fade_m) / env.floor_fade_m, 0.0, 1.0))[..., None]  # haze
        floor_rgb = np.where(floor[..., None], near * floor_rgb, 0.0)
        image = np.where(floor[..., None], floor_rgb + (1 - near) * image, image)
        return image, floor_xz, floor_rgb


def world_to_camera(mesh: Mesh, camera: Camera) -> Mesh:
    """A world-frame mesh expressed in the camera frame."""
    normals = None if mesh.normals is None else mesh.normals @ camera.rotation.T
    return Mesh(mesh.vertices @ camera.rotation.T + camera.translation, mesh.faces, mesh.albedo, normals)


def box_mesh(
    center: np.ndarray,
    size: np.ndarray,
    yaw_rad: float,
    color: np.ndarray,
    shade_jitter: np.ndarray | None = None,
) -> Mesh:
    """An axis-aligned (after yaw about +y) box with flat faces: 24 vertices, 12 triangles, world frame.

    center (3,) of the bottom face, size (3,) (x, y, z) metres; shade_jitter (6,) optional per-face
    albedo multipliers.
    """
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (0.0, 1.0) for z in (-0.5, 0.5)]) * size
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    face_normals = np.array(
        [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64
    )
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    vertices = np.concatenate([corners[list(q)] for q in quads]) @ rot.T + center
    normals = np.repeat(face_normals @ rot.T, 4, axis=0)
    faces = np.concatenate([[[4 * i, 4 * i + 1, 4 * i + 2], [4 * i, 4 * i + 2, 4 * i + 3]] for i in range(6)])
    jitter = np.ones(6) if shade_jitter is None else shade_jitter
    albedo = np.repeat(np.clip(color[None] * jitter[:, None], 0, 1), 4, axis=0)
    return Mesh(vertices, faces, albedo, normals)
