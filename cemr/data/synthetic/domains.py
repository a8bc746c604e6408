"""The two domains of the benchmark: what differs between the studio source and the wild target.

`Domain` holds every distribution one domain draws from (motions, body shapes, clothing,
cameras, lighting, surroundings, image degradations); `SOURCE` is Human3.6M-like (four fixed
studio cameras around the subject at chest height, plain room, fixed light, muted clothes),
`TARGET` is 3DPW-like (hand-held moving camera with drift, shake, roll, zoom and truncation;
cluttered procedural outdoor scenes, occluders, coloured light, bright patterned clothes,
motion blur, sensor noise, strong JPEG). The generator calls the same methods for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cemr.data.synthetic.motions import (
    SOURCE_FAMILIES,
    TARGET_FAMILIES,
    MotionFamily,
    euler_xyz_rotmat,
    smooth_noise,
)
from cemr.data.synthetic.renderer import Camera, Environment, Light, Mesh, box_mesh

# SMPL joint (argmax skinning weight) -> garment region
REGION_OF_JOINT = {
    "trousers": (0, 1, 2),  # pelvis, thighs
    "calves": (4, 5),
    "shoes": (7, 8, 10, 11),
    "shirt": (3, 6, 9, 13, 14),
    "upper_arms": (16, 17),
    "forearms": (18, 19),
    "skin": (12, 15, 20, 21, 22, 23),  # neck, head, hands
}
HEAD_JOINT = 15

SKIN_TONES = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.90, 0.70, 0.56],
        [0.78, 0.57, 0.42],
        [0.60, 0.42, 0.30],
        [0.45, 0.31, 0.22],
        [0.33, 0.22, 0.16],
    ]
)
HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.32, 0.18], [0.70, 0.58, 0.38], [0.55, 0.55, 0.55]]
)


@dataclass
class Subject:
    """One person: SMPL shape, gender tag and clothing (colours RGB in [0, 1])."""

    betas: np.ndarray  # (10,)
    gender: str  # 'm' | 'f'
    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    shirt_second: np.ndarray
    pattern: str  # plain | stripes | checks
    pattern_period_m: float
    trousers: np.ndarray
    shoes: np.ndarray
    short_sleeves: bool
    shorts: bool


@dataclass(frozen=True)
class Degradation:
    """Image degradations of one sequence (lengths in pixels, noise as a fraction of full scale)."""

    exposure: float = 1.0
    blur_px: float = 0.0  # motion-blur length added to the image motion (hand shake)
    blur_angle_rad: float = 0.0
    defocus_sigma_px: float = 0.0
    noise_std: float = 0.0
    jpeg_quality: int = 95


@dataclass
class CameraTrack:
    """Cameras of one sequence: rotation (T, 3, 3) world -> camera, translation (T, 3), focal (T,) pixels."""

    rotation: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    width: int
    height: int

    def repeat(self, num_frames: int) -> CameraTrack:
        """A one-frame track (a fixed camera) held for num_frames frames."""
        return CameraTrack(
            np.repeat(self.rotation, num_frames, 0),
            np.repeat(self.translation, num_frames, 0),
            np.repeat(self.focal, num_frames, 0),
            self.width,
            self.height,
        )

    def frame(self, i: int) -> Camera:
        """The camera of frame i; principal point (W/2, H/2), as SPIN/VIBE full-image cameras."""
        return Camera(
            self.rotation[i],
            self.translation[i],
            float(self.focal[i]),
            self.width,
            self.height,
            self.width / 2.0,
            self.height / 2.0,
        )


def look_at(
    eye: np.ndarray, target: np.ndarray, roll_rad: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """World (+y up) -> OpenCV camera (x right, y down, z forward) looking from eye (T, 3) at target (T, 3).

    Returns rotation (T, 3, 3) and translation (T, 3) with X_c = R X_w + t; roll turns the image
    clockwise about the viewing axis.
    """
    forward = target - eye
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward], axis=-2)
    roll = np.zeros((len(eye), 3))
    roll[:, 2] = roll_rad
    rotation = euler_xyz_rotmat(roll) @ rotation
    return rotation, -np.einsum("tij,tj->ti", rotation, eye)


@dataclass(frozen=True)
class Domain:
    """Distributions of one domain (all angles in degrees, lengths in metres)."""

    name: str
    families: tuple[MotionFamily, ...]
    betas_mean: tuple[float, ...]
    betas_std: tuple[float, ...]
    shirt_palette: tuple[tuple[float, float, float], ...]
    trousers_palette: tuple[tuple[float, float, float], ...]
    pattern_probs: tuple[float, float, float]  # plain, stripes, checks
    short_sleeve_prob: float
    shorts_prob: float
    handheld: bool  # True: one moving hand-held camera per sequence; False: a fixed rig of studio cameras
    outdoor: bool  # True: cluttered procedural outdoor scene; False: plain studio room
    rig_cameras: int = 4
    person_height_frac: tuple[float, float] = (0.5, 0.56)  # ~ (1.75 m person) / image height: sets the focal
    truncation_prob: float = 0.0
    occluder_prob: float = 0.0
    clutter_props: tuple[int, int] = (0, 0)
    ambient: tuple[float, float] = (0.5, 0.5)
    key_light: tuple[float, float] = (0.55, 0.55)
    light_azimuth_deg: tuple[float, float] = (20.0, 20.0)
    light_elevation_deg: tuple[float, float] = (60.0, 60.0)
    light_tint: float = 0.0  # max per-channel colour shift of the light
    blur_px: tuple[float, float] = (0.0, 0.0)  # extra motion-blur length on top of the image motion
    noise_std: tuple[float, float] = (0.004, 0.004)  # sensor noise, fraction of full scale
    jpeg_quality: tuple[int, int] = (92, 92)
    exposure: tuple[float, float] = (1.0, 1.0)
    defocus_sigma_px: tuple[float, float] = (0.0, 0.0)

    # ---------------------------------------------------------------- people

    def sample_subject(self, rng: np.random.Generator) -> Subject:
        betas = np.clip(rng.normal(self.betas_mean, self.betas_std), -3.0, 3.0)
        pattern = ("plain", "stripes", "checks")[rng.choice(3, p=self.pattern_probs)]
        shirt = np.array(self.shirt_palette[rng.integers(len(self.shirt_palette))])
        return Subject(
            betas=betas,
            gender="m" if rng.random() < 0.5 else "f",
            skin=SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.95, 1.05),
            hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
            shirt=np.clip(shirt * rng.uniform(0.85, 1.15, 3), 0, 1),
            shirt_second=np.clip(1.0 - shirt * rng.uniform(0.6, 1.0), 0, 1),
            pattern=pattern,
            pattern_period_m=rng.uniform(0.04, 0.12),
            trousers=np.clip(
                np.array(self.trousers_palette[rng.integers(len(self.trousers_palette))])
                * rng.uniform(0.85, 1.15, 3),
                0,
                1,
            ),
            shoes=np.full(3, rng.uniform(0.05, 0.3)) if rng.random() < 0.7 else rng.uniform(0.3, 0.95, 3),
            short_sleeves=bool(rng.random() < self.short_sleeve_prob),
            shorts=bool(rng.random() < self.shorts_prob),
        )

    # ---------------------------------------------------------------- cameras

    def sample_rig(self, rng: np.random.Generator, width: int, height: int) -> list[CameraTrack]:
        """The fixed studio cameras (one-frame tracks): around the capture area at chest height."""
        cameras = []
        for k in range(self.rig_cameras):
            azimuth = math.radians(45.0 + 360.0 * k / self.rig_cameras + rng.uniform(-8, 8))
            radius = rng.uniform(4.3, 4.8)
            eye = np.array([[radius * math.sin(azimuth), rng.uniform(1.35, 1.6), radius * math.cos(azimuth)]])
            target = np.array([[rng.uniform(-0.1, 0.1), rng.uniform(0.95, 1.1), rng.uniform(-0.1, 0.1)]])
            rotation, translation = look_at(eye, target, math.radians(rng.uniform(-1.0, 1.0)))
            focal = rng.uniform(*self.person_height_frac) * height * radius / 1.75
            cameras.append(CameraTrack(rotation, translation, np.array([focal]), width, height))
        return cameras

    def sample_handheld(
        self, rng: np.random.Generator, pelvis_world: np.ndarray, fps: float, width: int, height: int
    ) -> CameraTrack:
        """A hand-held camera following the person: drift, shake, roll, zoom, sometimes truncating."""
        num_frames = len(pelvis_world)
        times_s = np.arange(num_frames) / fps
        chest = pelvis_world + np.array([0.0, 0.25, 0.0])
        truncated = rng.random() < self.truncation_prob
        distance = rng.uniform(2.0, 2.8) if truncated else rng.uniform(2.4, 4.5)
        azimuth = rng.uniform(-math.pi, math.pi)
        eye0 = chest[0] + distance * np.array([math.sin(azimuth), 0.0, math.cos(azimuth)])
        eye0[1] = rng.uniform(0.9, 1.8)
        follow = rng.uniform(0.5, 1.0)
        drift = smooth_noise(rng, times_s, (3,), (0.05, 0.4)) * np.array([0.25, 0.08, 0.25])
        eye = eye0 + follow * (chest - chest[0]) + drift
        aim = smooth_noise(rng, times_s, (3,), (0.05, 0.3)) * (0.12 if truncated else 0.06)
        if truncated:  # aim nearer the head or the legs so the other end leaves the frame at times
            aim[:, 1] += rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)
        roll = math.radians(rng.uniform(-8, 8)) + math.radians(2.0) * smooth_noise(
            rng, times_s, (), (0.1, 0.5)
        )
        rotation, _ = look_at(eye, chest + aim, roll)
        shake = np.radians(rng.uniform(0.2, 0.8)) * smooth_noise(rng, times_s, (3,), (1.0, 4.0))
        rotation = euler_xyz_rotmat(shake) @ rotation
        translation = -np.einsum("tij,tj->ti", rotation, eye)
        frac_lo, frac_hi = self.person_height_frac
        if truncated:
            frac_lo, frac_hi = 0.65, 0.85
        depth = np.einsum("tj,tj->t", rotation[:, 2], chest - eye)  # camera z of the chest
        focal0 = rng.uniform(frac_lo, frac_hi) * height * float(np.median(depth)) / 1.75
        zoom = 1.0 + rng.uniform(0.0, 0.12) * smooth_noise(rng, times_s, (), (0.05, 0.25))
        return CameraTrack(rotation, translation, focal0 * zoom, width, height)

    # ---------------------------------------------------------------- scene

    def sample_light(self, rng: np.random.Generator) -> Light:
        """The sequence's light, in world coordinates (direction towards the light)."""
        azimuth = math.radians(rng.uniform(*self.light_azimuth_deg))
        elevation = math.radians(rng.uniform(*self.light_elevation_deg))
        direction = np.array(
            [
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
                math.cos(elevation) * math.cos(azimuth),
            ]
        )
        tint = 1.0 + rng.uniform(-self.light_tint, self.light_tint, 3)
        ambient_tint = 1.0 + rng.uniform(-self.light_tint, self.light_tint, 3)
        return Light(
            direction, rng.uniform(*self.key_light) * tint, rng.uniform(*self.ambient) * ambient_tint
        )

    def sample_environment(
        self, rng: np.random.Generator, person_xz: np.ndarray, camera_xz: np.ndarray
    ) -> Environment:
        """Surroundings; person_xz (T, 2) and camera_xz (T, 2) place occluders between them."""
        if not self.outdoor:
            return studio_environment(rng)
        away = person_xz.mean(0) - camera_xz.mean(0)
        behind = math.atan2(away[0], away[1])
        props = [
            clutter_prop(rng, person_xz.mean(0), behind)
            for _ in range(rng.integers(*self.clutter_props, endpoint=True))
        ]
        if rng.random() < self.occluder_prob:
            props.append(occluder(rng, person_xz, camera_xz))
        return outdoor_environment(rng, tuple(props))

    # ---------------------------------------------------------------- image degradations

    def sample_degradation(self, rng: np.random.Generator) -> Degradation:
        return Degradation(
            exposure=rng.uniform(*self.exposure),
            blur_px=rng.uniform(*self.blur_px),
            blur_angle_rad=rng.uniform(0, math.pi),
            defocus_sigma_px=rng.uniform(*self.defocus_sigma_px),
            noise_std=rng.uniform(*self.noise_std),
            jpeg_quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1], endpoint=True)),
        )


def finish_image(
    image: np.ndarray, degradation: Degradation, image_motion_px: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Float RGB (H, W, 3) -> uint8 RGB: exposure, motion blur along `image_motion_px` (2,) plus the
    sequence's shake blur, defocus, gamma and signal-dependent sensor noise (JPEG comes when writing)."""
    image = image * degradation.exposure
    angle = degradation.blur_angle_rad
    blur = 0.5 * image_motion_px + degradation.blur_px * np.array([math.cos(angle), math.sin(angle)])
    if np.hypot(*blur) > 0.75:  # the shutter is open for about half the frame time
        image = cv2.filter2D(image, -1, line_kernel(blur), borderType=cv2.BORDER_REFLECT)
    if degradation.defocus_sigma_px > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), degradation.defocus_sigma_px)
    image = np.clip(image, 0.0, 1.0) ** (1 / 1.1)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * degradation.noise_std
    image = image + noise * (0.5 + np.sqrt(image))
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def line_kernel(vector_px: np.ndarray) -> np.ndarray:
    """Normalised motion-blur kernel: a line segment of direction and length `vector_px` (2,)."""
    length = float(np.hypot(*vector_px))
    size = 2 * int(math.ceil(length / 2)) + 1
    kernel = np.zeros((size, size), np.float32)
    half = vector_px / 2.0
    centre = size // 2
    for s in np.linspace(-1.0, 1.0, 4 * size + 1):
        x, y = centre + s * half[0], centre + s * half[1]
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # bilinear splat
            w = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size and w > 0:
                kernel[y0 + dy, x0 + dx] += w
    return kernel / kernel.sum()


# -------------------------------------------------------------------- procedural surroundings


def studio_environment(rng: np.random.Generator) -> Environment:
    """Plain grey room: uniform floor, near-uniform walls with a soft vertical gradient."""
    wall = np.array([0.62, 0.62, 0.6]) * rng.uniform(0.97, 1.03)
    floor = np.array([0.42, 0.41, 0.4]) * rng.uniform(0.97, 1.03)
    rows = np.linspace(1.0, 0.85, 32)[:, None, None]
    panorama = np.broadcast_to(wall * rows, (32, 64, 3)).copy()
    return Environment(
        np.broadcast_to(floor, (4, 4, 3)).copy(), 1.0, panorama, floor_fade_m=6.0, shadow_strength=0.3
    )


def outdoor_environment(rng: np.random.Generator, props: tuple[Mesh, ...]) -> Environment:
    """Cluttered outdoor scene: sky, buildings, trees and poles on the horizon, textured ground."""
    height, width = 192, 768  # elevation 1.2 .. -0.6 rad top to bottom, azimuth all round
    elev = np.linspace(1.2, -0.6, height)
    sky_top, sky_low = (
        rng.uniform([0.3, 0.45, 0.7], [0.6, 0.7, 0.95]),
        rng.uniform([0.7, 0.75, 0.8], [0.95, 0.95, 1.0]),
    )
    mix = np.clip(elev / 1.2, 0, 1)[:, None, None]
    pano = np.broadcast_to(mix * sky_top + (1 - mix) * sky_low, (height, width, 3)).astype(np.float32).copy()
    horizon = int(round(1.2 / 1.8 * height))
    for _ in range(rng.integers(25, 45)):  # buildings with windows
        w, h = int(rng.integers(20, 90)), int(rng.integers(15, horizon - 5))
        x = int(rng.integers(0, width))
        color = rng.uniform(0.15, 0.85, 3)
        cv2.rectangle(pano, (x, horizon - h), (x + w, horizon + 20), color.tolist(), -1)
        win = color * rng.uniform(0.3, 0.7)
        step = int(rng.integers(5, 10))
        for wy in range(horizon - h + 3, horizon - 2, step):
            for wx in range(x + 3, x + w - 3, step):
                cv2.rectangle(pano, (wx, wy), (wx + step // 2, wy + step // 2), win.tolist(), -1)
    for _ in range(rng.integers(10, 25)):  # trees and bushes
        x, y = int(rng.integers(0, width)), horizon - int(rng.integers(0, 40))
        green = np.array([rng.uniform(0.05, 0.3), rng.uniform(0.25, 0.6), rng.uniform(0.05, 0.25)])
        cv2.line(pano, (x, y), (x, horizon + 10), (0.25, 0.17, 0.1), int(rng.integers(2, 5)))
        cv2.circle(pano, (x, y), int(rng.integers(8, 28)), green.tolist(), -1)
    for _ in range(rng.integers(8, 20)):  # poles, signs, cables
        x = int(rng.integers(0, width))
        color = rng.uniform(0.05, 0.9, 3).tolist()
        cv2.line(
            pano, (x, horizon - int(rng.integers(20, 80))), (x, horizon + 20), color, int(rng.integers(1, 4))
        )
        if rng.random() < 0.5:
            y = horizon - int(rng.integers(20, 70))
            cv2.rectangle(pano, (x - 6, y), (x + 6, y + 8), rng.uniform(0, 1, 3).tolist(), -1)
    pano += rng.normal(0, 0.03, pano.shape).astype(np.float32)  # texture grain

    tex = 128
    kind = rng.integers(3)
    base = rng.uniform(0.2, 0.6, 3)
    if kind == 0:  # paving tiles
        ground = np.tile(base, (tex, tex, 1)).astype(np.float32)
        step = int(rng.integers(8, 24))
        for i in range(0, tex, step):
            for j in range(0, tex, step):
                ground[i : i + step, j : j + step] *= rng.uniform(0.85, 1.15)
            ground[i : i + 1] *= 0.6
            ground[:, i : i + 1] *= 0.6
    elif kind == 1:  # grass
        ground = (
            np.array([0.15, 0.4, 0.12]) * rng.uniform(0.7, 1.3) * (1 + 0.35 * rng.normal(size=(tex, tex, 1)))
        )
    else:  # asphalt with markings
        ground = np.full((tex, tex, 3), rng.uniform(0.2, 0.35)) * (1 + 0.25 * rng.normal(size=(tex, tex, 1)))
        ground[:, tex // 2 - 2 : tex // 2 + 2] = rng.uniform(0.7, 0.9)
    ground = cv2.GaussianBlur(np.clip(ground, 0, 1).astype(np.float32), (0, 0), 0.7)
    return Environment(
        ground,
        rng.uniform(0.02, 0.05),
        np.clip(pano, 0, 1),
        floor_fade_m=20.0,
        shadow_strength=0.45,
        props=props,
    )


def clutter_prop(rng: np.random.Generator, centre_xz: np.ndarray, behind_rad: float) -> Mesh:
    """A box (wall, kiosk, bench, car-sized block) 2.5-9 m from the scene centre, on the far side
    from the camera (azimuth within 80 degrees of `behind_rad`)."""
    angle, dist = behind_rad + math.radians(rng.uniform(-80, 80)), rng.uniform(2.5, 9.0)
    size = rng.uniform([0.4, 0.4, 0.4], [3.0, 2.8, 2.0])
    centre = np.array([centre_xz[0] + dist * math.sin(angle), 0.0, centre_xz[1] + dist * math.cos(angle)])
    return box_mesh(centre, size, rng.uniform(0, math.pi), rng.uniform(0.1, 0.9, 3), rng.uniform(0.8, 1.1, 6))


def occluder(rng: np.random.Generator, person_xz: np.ndarray, camera_xz: np.ndarray) -> Mesh:
    """A pole, panel or bin between the camera and the person, offset sideways so it covers part of them."""
    frame = rng.integers(len(person_xz))
    along = rng.uniform(0.45, 0.75)
    direction = person_xz[frame] - camera_xz[frame]
    side = np.array([-direction[1], direction[0]]) / max(np.linalg.norm(direction), 1e-9)
    base = camera_xz[frame] + along * direction + side * rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45)
    kind = rng.integers(3)
    size = [
        np.array([0.1, 2.5, 0.1]),
        rng.uniform([0.4, 0.7, 0.05], [0.8, 1.1, 0.1]),
        rng.uniform([0.3, 0.5, 0.3], [0.6, 0.9, 0.6]),
    ][kind]
    yaw = math.atan2(direction[0], direction[1]) + math.pi / 2
    return box_mesh(
        np.array([base[0], 0.0, base[1]]), size, yaw, rng.uniform(0.05, 0.95, 3), rng.uniform(0.8, 1.1, 6)
    )


# -------------------------------------------------------------------- clothing


def vertex_albedo(
    subject: Subject,
    vertex_joint: np.ndarray,
    rest_vertices: np.ndarray,
    head_joint_rest: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(V, 3) albedo from garment regions (argmax skinning joint `vertex_joint` (V,)) and the shirt
    pattern, laid out on the rest-pose mesh `rest_vertices` (V, 3)."""
    region_colour = {
        "trousers": subject.trousers,
        "calves": subject.skin if subject.shorts else subject.trousers,
        "shoes": subject.shoes,
        "shirt": subject.shirt,
        "upper_arms": subject.shirt,
        "forearms": subject.skin if subject.short_sleeves else subject.shirt,
        "skin": subject.skin,
    }
    albedo = np.zeros_like(rest_vertices)
    for region, joints in REGION_OF_JOINT.items():
        albedo[np.isin(vertex_joint, joints)] = region_colour[region]
    shirt = np.isin(
        vertex_joint,
        REGION_OF_JOINT["shirt"]
        + REGION_OF_JOINT["upper_arms"]
        + (() if subject.short_sleeves else REGION_OF_JOINT["forearms"]),
    )
    period = subject.pattern_period_m
    x, y = rest_vertices[:, 0], rest_vertices[:, 1]
    if subject.pattern == "stripes":
        second = np.sin(2 * np.pi * y / period) > 0
    elif subject.pattern == "checks":
        second = (np.sin(2 * np.pi * y / period) > 0) ^ (np.sin(2 * np.pi * x / period) > 0)
    else:
        second = np.zeros(len(y), dtype=bool)
    albedo[shirt & second] = subject.shirt_second
    head = vertex_joint == HEAD_JOINT
    offset = rest_vertices - head_joint_rest
    hair = head & ((offset[:, 1] > 0.06) | ((offset[:, 2] < -0.02) & (offset[:, 1] > -0.04)))
    albedo[hair] = subject.hair
    albedo *= rng.uniform(0.93, 1.07, (len(albedo), 1))  # fabric grain
    return np.clip(albedo, 0.0, 1.0)


MUTED = (
    (0.25, 0.25, 0.28),
    (0.15, 0.18, 0.3),
    (0.45, 0.45, 0.45),
    (0.3, 0.22, 0.18),
    (0.55, 0.5, 0.45),
    (0.2, 0.3, 0.25),
    (0.12, 0.12, 0.12),
    (0.7, 0.7, 0.72),
)
DARK_TROUSERS = ((0.1, 0.1, 0.12), (0.15, 0.17, 0.28), (0.3, 0.3, 0.32), (0.35, 0.28, 0.2))
BRIGHT = (
    (0.9, 0.15, 0.15),
    (0.95, 0.75, 0.1),
    (0.1, 0.6, 0.9),
    (0.2, 0.8, 0.3),
    (0.9, 0.4, 0.8),
    (1.0, 0.5, 0.1),
    (0.95, 0.95, 0.95),
    (0.5, 0.2, 0.8),
    (0.1, 0.8, 0.8),
)
VARIED_TROUSERS = (
    (0.2, 0.3, 0.6),
    (0.75, 0.7, 0.55),
    (0.5, 0.1, 0.1),
    (0.1, 0.4, 0.2),
    (0.85, 0.85, 0.85),
    (0.1, 0.1, 0.1),
)

SOURCE = Domain(
    name="source",
    families=SOURCE_FAMILIES,
    betas_mean=(0.0,) * 10,
    betas_std=(0.8, 0.8) + (0.5,) * 8,
    shirt_palette=MUTED,
    trousers_palette=DARK_TROUSERS,
    pattern_probs=(0.9, 0.1, 0.0),
    short_sleeve_prob=0.3,
    shorts_prob=0.0,
    handheld=False,
    outdoor=False,
    person_height_frac=(0.6, 0.66),
)

TARGET = Domain(
    name="target",
    families=TARGET_FAMILIES,
    betas_mean=(0.8, -0.8, 0.5) + (0.0,) * 7,
    betas_std=(1.0, 1.0) + (0.7,) * 8,
    shirt_palette=BRIGHT,
    trousers_palette=VARIED_TROUSERS,
    pattern_probs=(0.3, 0.4, 0.3),
    short_sleeve_prob=0.5,
    shorts_prob=0.35,
    handheld=True,
    outdoor=True,
    person_height_frac=(0.45, 0.7),
    truncation_prob=0.3,
    occluder_prob=0.5,
    clutter_props=(3, 8),
    ambient=(0.25, 0.5),
    key_light=(0.5, 1.0),
    light_azimuth_deg=(-180.0, 180.0),
    light_elevation_deg=(20.0, 70.0),
    light_tint=0.2,
    blur_px=(0.0, 3.0),
    noise_std=(0.01, 0.03),
    jpeg_quality=(35, 75),
    exposure=(0.8, 1.25),
    defocus_sigma_px=(0.0, 0.8),
)

DOMAINS = {SOURCE.name: SOURCE, TARGET.name: TARGET}
