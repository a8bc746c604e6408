"""One synthetic video: motion -> posed body -> camera -> rendered frames and labels.

Labels are made the way a user would check them: the stored camera-frame pose, betas and
translation go through the body model again, and the 49 joints are projected with the frame's
pinhole camera (principal point (W/2, H/2)). So `part`/`openpose` are exactly
`perspective_projection(body(pose, betas).joints, trans, focal, (W/2, H/2))`, and the rendered
mesh is the same body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from cemr.body import BodyModel
from cemr.data.synthetic.domains import DOMAINS, HEAD_JOINT, finish_image, vertex_albedo
from cemr.data.synthetic.keypoints import KeypointNoise, bbox_from_keypoints, detect_keypoints
from cemr.data.synthetic.motions import FAMILIES, sample_motion
from cemr.data.synthetic.renderer import (
    EnvironmentRenderer,
    Mesh,
    VertexNormals,
    box_mesh,
    render,
    world_to_camera,
)
from cemr.geometry import axis_angle_to_rotmat, perspective_projection, rotmat_to_axis_angle

PELVIS_J24 = 14  # "Pelvis (MPII)" in the 24 GT joints: the root S is expressed relative to
SELF_OCCLUSION_M = 0.15  # a joint counts as hidden when a surface lies this much nearer than it


@dataclass(frozen=True)
class SequenceSpec:
    """Everything that identifies one sequence; `entropy` seeds all of its random draws."""

    domain: str  # key of domains.DOMAINS
    name: str
    family: str  # key of motions.FAMILIES
    entropy: tuple[int, ...]
    subject_entropy: tuple[int, ...]
    camera_entropy: tuple[int, ...] | None = None  # the studio rig's seed (fixed cameras)
    camera_index: int = 0
    num_frames: int = 100  # video frames simulated
    frame_stride: int = 1  # keep every stride-th frame
    fps: float = 30.0
    image_size: tuple[int, int] = (192, 192)  # (width, height)
    supersample: int = 1
    bbox_scale_factor: float = 1.2
    keypoint_noise: KeypointNoise = field(default_factory=KeypointNoise)


@dataclass
class SequenceData:
    """Rendered frames (RGB uint8, (T, H, W, 3)), their JPEG quality and per-frame labels (npz keys)."""

    images: np.ndarray
    jpeg_quality: int
    labels: dict[str, np.ndarray]
    body_mask: np.ndarray  # (T, H, W) bool, pixels where the person is the nearest surface


def _rngs(entropy: tuple[int, ...], count: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(list(entropy)).spawn(count)]


def generate_sequence(spec: SequenceSpec, body_models: dict[str, BodyModel]) -> SequenceData:
    """Simulate and render one sequence. body_models: gender tag 'm'/'f' -> BodyModel (float64 advised)."""
    domain = DOMAINS[spec.domain]
    motion_rng, camera_rng, scene_rng, image_rng, keypoint_rng, paint_rng = _rngs(spec.entropy, 6)
    subject = domain.sample_subject(np.random.default_rng(np.random.SeedSequence(list(spec.subject_entropy))))
    model = body_models[subject.gender]
    width, height = spec.image_size
    frames = np.arange(0, spec.num_frames, spec.frame_stride)
    motion = sample_motion(FAMILIES[spec.family], spec.num_frames, spec.fps, motion_rng)
    body = PosedBody(model, subject.betas, motion.body_pose[frames], motion.root_orient[frames])
    pelvis_world = np.c_[motion.root_xz[frames, 0], body.pelvis_height, motion.root_xz[frames, 1]]

    if domain.handheld:
        track = domain.sample_handheld(camera_rng, pelvis_world, spec.fps / spec.frame_stride, width, height)
    else:
        rig_rng = np.random.default_rng(np.random.SeedSequence(list(spec.camera_entropy)))
        track = domain.sample_rig(rig_rng, width, height)[spec.camera_index % domain.rig_cameras].repeat(
            len(frames)
        )

    # camera-frame SMPL parameters, then labels and mesh from exactly those stored values
    root_cam = rotmat_to_axis_angle(
        torch.from_numpy(track.rotation) @ axis_angle_to_rotmat(torch.from_numpy(body.root_orient))
    ).numpy()
    pose = np.concatenate([root_cam, body.body_pose.reshape(len(frames), -1)], axis=1)
    trans = np.einsum("tij,tj->ti", track.rotation, pelvis_world) + track.translation - body.rest_pelvis
    with torch.no_grad():
        cam = model(*(torch.as_tensor(a, dtype=model.dtype) for a in (body.betas, pose[:, 3:], pose[:, :3])))
    center_px = torch.tensor([[width / 2.0, height / 2.0]], dtype=torch.float64).expand(len(frames), 2)
    keypoints = perspective_projection(
        cam.joints.double(), torch.from_numpy(trans), torch.from_numpy(track.focal), center_px
    ).numpy()  # (T, 49, 2)
    joints_cam = cam.joints.double().numpy() + trans[:, None]
    vertices_cam = cam.vertices.double().numpy() + trans[:, None]

    # surroundings and appearance
    camera_xz = (-np.einsum("tji,tj->ti", track.rotation, track.translation))[:, [0, 2]]
    env = domain.sample_environment(scene_rng, pelvis_world[:, [0, 2]], camera_xz)
    light = domain.sample_light(scene_rng)
    degradation = domain.sample_degradation(image_rng)
    props = list(env.props)
    if FAMILIES[spec.family].seated:
        world_vertices = body.vertices - body.rest_pelvis[:, None] + pelvis_world[:, None]
        props.append(seat_box(world_vertices, body.vertex_joint, body.root_orient, scene_rng))
    albedo = vertex_albedo(subject, body.vertex_joint, body.rest_vertices, body.rest_head, paint_rng)

    faces = model.faces.numpy()
    normals_of = VertexNormals(faces, len(albedo))
    draw_environment = EnvironmentRenderer(env)
    images = np.zeros((len(frames), height, width, 3), np.uint8)
    body_mask = np.zeros((len(frames), height, width), bool)
    visible = np.zeros(keypoints.shape[:2], bool)
    for i in range(len(frames)):
        camera = track.frame(i).scaled(spec.supersample)
        background = draw_environment(camera, shadow_xz=pelvis_world[i, [0, 2]])
        person = Mesh(vertices_cam[i], faces, albedo, normals_of(vertices_cam[i]))
        meshes = [person] + [world_to_camera(prop, camera) for prop in props]
        out = render(meshes, camera, light.rotated(camera.rotation), background)
        image, mask = out.image, out.mesh_id == 0
        if spec.supersample > 1:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5
        motion_px = keypoints[i, 8] - keypoints[max(i - 1, 0), 8]  # mid-hip image motion since the last frame
        images[i] = finish_image(image, degradation, motion_px, image_rng)
        body_mask[i] = mask
        visible[i] = _unoccluded(joints_cam[i], camera, out.depth)

    center, scale = bbox_from_keypoints(keypoints, spec.bbox_scale_factor)
    ones = np.ones((len(frames), keypoints.shape[1], 1))
    joints24 = joints_cam[:, 25:]
    labels = {
        "center": center,
        "scale": scale,
        "pose": pose,
        "shape": body.betas.copy(),
        "has_smpl": np.ones(len(frames)),
        "gender": np.full(len(frames), subject.gender, dtype="<U1"),
        "S": np.concatenate([joints24 - joints24[:, PELVIS_J24, None], ones[:, 25:]], axis=-1),
        "part": np.concatenate([keypoints[:, 25:], ones[:, 25:]], axis=-1),
        "openpose": np.concatenate([keypoints[:, :25], ones[:, :25]], axis=-1),
        "keypoints_detected": detect_keypoints(
            keypoints, visible, scale, width, height, spec.keypoint_noise, keypoint_rng
        ),
        "frame": frames.astype(np.int64),
        "trans": trans,
        "focal": track.focal.astype(np.float64),
    }
    return SequenceData(images, degradation.jpeg_quality, labels, body_mask)


class PosedBody:
    """The body of one subject over the kept frames, in the world frame (pelvis joint at its rest
    position J0; `pelvis_height` lifts it so the lowest vertex touches the floor y = 0)."""

    def __init__(
        self, model: BodyModel, betas: np.ndarray, body_pose: np.ndarray, root_orient: np.ndarray
    ) -> None:
        num = len(body_pose)
        self.betas = np.repeat(betas[None], num, 0)  # (T, 10)
        self.body_pose, self.root_orient = body_pose, root_orient  # (T, 23, 3), (T, 3) axis-angle
        as_model = {"dtype": model.dtype}
        with torch.no_grad():
            world = model(
                torch.as_tensor(self.betas, **as_model),
                torch.as_tensor(body_pose.reshape(num, -1), **as_model),
                torch.as_tensor(root_orient, **as_model),
            )
            rest = model(
                torch.as_tensor(self.betas[:1], **as_model),
                torch.zeros(1, 69, **as_model),
                torch.zeros(1, 3, **as_model),
            )
        self.vertices = world.vertices.double().numpy()  # (T, V, 3)
        self.rest_pelvis = world.smpl_joints[:, 0].double().numpy()  # (T, 3) J0, the same for every pose
        self.pelvis_height = self.rest_pelvis[:, 1] - self.vertices[..., 1].min(axis=1)  # (T,)
        self.rest_vertices = rest.vertices[0].double().numpy()  # (V, 3) T-pose of this shape
        self.rest_head = rest.smpl_joints[0, HEAD_JOINT].double().numpy()
        self.vertex_joint = model.smpl.lbs_weights.argmax(dim=1).numpy()  # (V,) joint that moves it most


def seat_box(
    vertices_world: np.ndarray, vertex_joint: np.ndarray, root_orient: np.ndarray, rng: np.random.Generator
) -> Mesh:
    """A stool under the buttocks at the deepest frame: vertices_world (T, V, 3), root_orient (T, 3) world."""
    seat = np.isin(vertex_joint, (0, 1, 2))  # pelvis and thighs
    frame = int(np.argmin(vertices_world[:, seat, 1].min(axis=1)))
    points = vertices_world[frame, seat]
    forward = axis_angle_to_rotmat(torch.as_tensor(root_orient[frame]))[:, 2].numpy()
    yaw = float(np.arctan2(forward[0], forward[2]))
    c, s = np.cos(yaw), np.sin(yaw)
    to_local = np.array([[c, s], [-s, c]])  # world (x, z) rows -> (across, forward) in the heading frame
    local = points[:, [0, 2]] @ to_local
    low = np.array([local[:, 0].mean() - 0.22, local[:, 1].min() - 0.05])
    size_xz = np.array([0.44, 0.45])
    centre_xz = (low + size_xz / 2) @ to_local.T
    size = np.array([size_xz[0], points[:, 1].min(), size_xz[1]])
    colour = rng.uniform(0.2, 0.7, 3)
    return box_mesh(np.array([centre_xz[0], 0.0, centre_xz[1]]), size, yaw, colour, rng.uniform(0.8, 1.1, 6))


def _unoccluded(joints_cam: np.ndarray, camera, depth: np.ndarray) -> np.ndarray:
    """(J,) True where the joint is in the image and no surface lies SELF_OCCLUSION_M nearer than it."""
    uvz = camera.project(joints_cam)
    col, row = np.round(uvz[:, 0]).astype(np.int64), np.round(uvz[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height) & (uvz[:, 2] > 0)
    nearest = np.full(len(uvz), np.inf)
    nearest[inside] = depth[row[inside], col[inside]]
    return inside & (nearest > uvz[:, 2] - SELF_OCCLUSION_M)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG image")
    return buffer.tobytes()
