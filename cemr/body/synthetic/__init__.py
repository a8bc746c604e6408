"""A procedural humanoid written in SMPL's own file layout (shared/reference/FORMATS.md, section 5).

`make_synthetic_body_model(out_dir)` writes everything the real-SMPL code path reads, so that
`cemr.body.load_body_model` and the pose prior load it unchanged:

    SMPL_{NEUTRAL,MALE,FEMALE}.pkl   protocol-2 dicts with SMPL's keys (+ 'cemr_vertex_joint_ids')
    J_regressor_extra.npy (9, V)     J_regressor_h36m.npy (17, V)
    smpl_mean_params.npz             gmm_08.pkl (protocol 0)
    synthetic_body.json              manifest (generator version and seed), written last

How the body is made:
- Skeleton: SMPL's 24 joints in its rest T-pose (metres, +y up, facing +z, the body's left at +x,
  pelvis joint at (0, -0.225, 0.015) as in SMPL; about 1.71 m tall for the neutral body).
- Surface: the zero level set of a smooth union of ellipsoids and tapered capsules, one per body
  part, each owned by the joint whose bone it covers. The mesh is ONE closed, consistently oriented
  (outward normals), genus-0 manifold: a coarse quad cage is box-modelled by extruding faces (torso
  box; legs, arms, thumbs, feet and neck/head extruded from it), refined by two Catmull-Clark steps
  (which keep it a closed manifold) and its vertices are projected onto the level set, with
  tangential relaxation. Quads are split into triangles along their shorter diagonal.
- Skinning weights: each vertex starts one-hot on the owner of its nearest part, then the weights
  are diffused over the mesh graph, so they blend smoothly near joints (rows sum to 1).
- Shape space: beta_i scales each joint's local frame by a matrix linear in beta (bone lengths,
  girth; plus a free-form belly bulge), so vertices are *exactly* linear in beta and the blend
  shapes are that map's columns. Joints follow because J_regressor is applied to the shaped mesh.
- Regressors: each row is a convex combination of nearby surface vertices whose mean is the
  intended joint (exact in the rest template).

Only the pose prior (and nothing of the mesh) depends on `seed`. Output is byte-identical for equal
seeds, and written into a temporary directory first so an interrupted run leaves no half model.

The package's modules, bottom up: skeleton, surface (implicit), mesh, rig (skinning weights and
regressors), shape, pose (GMM prior, mean parameters), model (every file's content); this module
writes the files, with the manifest that makes a directory a cache.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

from cemr.atomic import write_npz
from cemr.body.synthetic.model import GENDERS, build_synthetic_body_model
from cemr.body.synthetic.pose import _gmm as _gmm  # tests compare the written prior with it
from cemr.body.synthetic.shape import GENDER_BETAS, NUM_BETAS, SHAPE_NAMES, shaped_joints
from cemr.body.synthetic.skeleton import rest_joints

__all__ = [
    "GENDERS",
    "GENDER_BETAS",
    "GENERATOR_VERSION",
    "MANIFEST",
    "MODEL_FILES",
    "NUM_BETAS",
    "SHAPE_NAMES",
    "build_synthetic_body_model",
    "make_synthetic_body_model",
    "rest_joints",
    "shaped_joints",
]

GENERATOR_VERSION = 1
MANIFEST = "synthetic_body.json"
MODEL_FILES = (
    *(f"SMPL_{gender}.pkl" for gender in GENDERS),
    "J_regressor_extra.npy",
    "J_regressor_h36m.npy",
    "smpl_mean_params.npz",
    "gmm_08.pkl",
)


def _write_file(path: Path, value) -> None:
    if path.suffix == ".npy":
        np.save(path, value, allow_pickle=False)
    elif path.suffix == ".npz":
        write_npz(path, value)
    else:  # SMPL files are protocol-2 pickles, the GMM a protocol-0 one (as the released files)
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=0 if path.name == "gmm_08.pkl" else 2)


def _is_cached(out_dir: Path, seed: int) -> bool:
    """True when out_dir holds this generator's complete model for `seed`.

    Raises FileExistsError where writing would clobber files that are not ours (model files but no
    manifest: someone else's, or an interrupted overwrite) or a model made with another seed.
    A model from another generator version is stale: False, so it is rebuilt.
    """
    present = [name for name in MODEL_FILES if (out_dir / name).is_file()]
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        if present:
            raise FileExistsError(
                f"{out_dir}: holds {', '.join(present)} but no {MANIFEST}, so they were not written by "
                "make_synthetic_body_model (or a write was interrupted); pass overwrite=True to replace them"
            )
        return False
    try:
        info = json.loads(manifest.read_text())
        version, found_seed = info["version"], info["seed"]
    except (ValueError, KeyError, TypeError) as err:
        raise FileExistsError(
            f"{manifest}: unreadable manifest ({err!r}); pass overwrite=True to rebuild"
        ) from err
    if version == GENERATOR_VERSION and found_seed != seed:
        raise FileExistsError(
            f"{manifest}: the model in {out_dir} was made with seed {found_seed}, expected seed {seed}; "
            "pass overwrite=True to rebuild it or use another directory"
        )
    return version == GENERATOR_VERSION and len(present) == len(MODEL_FILES)


def make_synthetic_body_model(out_dir: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the procedural body model (files listed in the module docstring) into `out_dir`.

    Returns out_dir as a Path. With overwrite=False, a complete model for this seed already there is
    returned untouched (a cache); one from an older generator version is rebuilt; model files
    without our manifest, or a manifest with another seed, raise FileExistsError.
    Files are built in a hidden temporary sibling directory that then becomes out_dir in one atomic
    rename, or, where out_dir already exists, replaces our files one by one with the manifest
    removed first and written last: an interrupted run never leaves a model that passes as complete.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_synthetic_body_model: seed must be a non-negative integer, found {seed!r}")
    seed = int(seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"make_synthetic_body_model: {out_dir} exists and is not a directory")
    if not overwrite and out_dir.is_dir() and _is_cached(out_dir, seed):
        return out_dir

    content = build_synthetic_body_model(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask (the model is shared, not private)
    try:
        for name, value in content.items():
            _write_file(tmp / name, value)
        (tmp / MANIFEST).write_text(
            json.dumps({"generator": __name__, "version": GENERATOR_VERSION, "seed": seed})
        )
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            tmp.rename(out_dir)  # atomic when out_dir does not exist
            return out_dir
        except OSError:
            pass  # out_dir exists (maybe with other files): replace our files one by one
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for name in MODEL_FILES:
            os.replace(tmp / name, out_dir / name)
        os.replace(tmp / MANIFEST, out_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
