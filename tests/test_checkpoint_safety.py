"""A checkpoint is data: its config may only build one of the project's models from plain values, and
its weights must be finite. Hostile files are built here exactly as an attacker would write them."""

from __future__ import annotations

import re

import pytest
import torch

from cemr.models import (
    HMR,
    VIBE,
    CheckpointError,
    VideoEncoder,
    load_checkpoint,
    load_videomae_checkpoint,
    save_checkpoint,
)
from tests.conftest import REPO, compose_config
from tests.test_models import TINY_TRUNK, TINY_VIDEO, write_mean_params

TINY_HMR = {**TINY_TRUNK, "norm": "group"}


@pytest.fixture
def mean_params(tmp_path):
    path = tmp_path / "smpl_mean_params.npz"
    write_mean_params(path)
    return path


def hmr_config(mean_params) -> dict:
    return {"_target_": "cemr.models.HMR", "_convert_": "all", "mean_params": str(mean_params), **TINY_HMR}


def write_raw(path, config: dict, state_dict: dict, extra: dict | None = None):
    """A checkpoint written with torch.save directly, as anyone can, bypassing save_checkpoint's checks."""
    torch.save(
        {"format": "cemr-checkpoint-v1", "config": config, "state_dict": state_dict, "extra": extra or {}},
        path,
    )
    return path


def write_text_node(target_file) -> dict:
    """Hydra config that, instantiated, runs pathlib.Path(target_file).write_text('owned')."""
    return {
        "_target_": "pathlib.Path.write_text",
        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(target_file)]}, "owned"],
    }


def hostile_hmr_file(tmp_path, mean_params, where: str):
    """A valid HMR checkpoint (weights fit) whose config hides a write_text node at `where`."""
    pwned = tmp_path / "pwned.txt"
    config = hmr_config(mean_params)
    state_dict = HMR(**{k: v for k, v in config.items() if not k.startswith("_")}).state_dict()
    if where == "name":
        config["name"] = write_text_node(pwned)
    else:  # inside a nested dict the model passes on to timm
        config["trunk_kwargs"] = {**config["trunk_kwargs"], "extra": write_text_node(pwned)}
    return write_raw(tmp_path / "hostile.ckpt", config, state_dict), pwned


@pytest.mark.parametrize(
    ("where", "key"), [("name", "name._target_"), ("trunk", "trunk_kwargs.extra._target_")]
)
def test_a_nested_target_in_the_config_runs_nothing(tmp_path, mean_params, where, key):
    path, pwned = hostile_hmr_file(tmp_path, mean_params, where)
    with pytest.raises(
        CheckpointError, match=rf"hostile\.ckpt: config key '{re.escape(key)}' is a Hydra special key"
    ):
        load_checkpoint(path)
    assert not pwned.exists()


def test_adapt_source_checkpoint_with_a_nested_target_runs_nothing(tmp_path, mean_params):
    from cemr.adapt.run import load_source

    path, pwned = hostile_hmr_file(tmp_path, mean_params, "name")
    cfg = compose_config("adapt", [f"training.checkpoint={path}", f"body.mean_params={mean_params}"])
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt: config key 'name\._target_'"):
        load_source(cfg)
    assert not pwned.exists()


def test_video_encoder_checkpoint_with_a_nested_target_runs_nothing(tmp_path):
    from cemr.train.run import load_video_encoder

    pwned = tmp_path / "pwned.txt"
    config = {"_target_": "cemr.models.VideoEncoder", **TINY_VIDEO, "pretrain": write_text_node(pwned)}
    state_dict = VideoEncoder(**TINY_VIDEO).state_dict()
    path = write_raw(tmp_path / "video.ckpt", config, state_dict)
    cfg = compose_config("adapt", [f"training.video_encoder_checkpoint={path}"])
    with pytest.raises(CheckpointError, match=r"video\.ckpt: config key 'pretrain\._target_'"):
        load_video_encoder(cfg)
    assert not pwned.exists()


DEEP: dict = {"a": 1}
for _ in range(40):
    DEEP = {"a": DEEP}

REFUSED = {  # config change -> (dotted key named, what the message says)
    "numpy.load": (
        {"name": {"_target_": "numpy.load", "file": "x.npy", "allow_pickle": True}},
        "name._target_",
        "is a Hydra special key",
    ),
    "foreign class": (
        {"_target_": "builtins.eval"},
        "_target_",
        "is 'builtins\\.eval'; expected one of the project's models",
    ),
    "partial": ({"_partial_": True}, "_partial_", "is a Hydra special key"),
    "args": ({"_args_": ["x"]}, "_args_", "is a Hydra special key"),
    "recursive in a list": (
        {"trunk_kwargs": {"channels": [{"_recursive_": False}]}},
        "trunk_kwargs.channels[0]._recursive_",
        "is a Hydra special key",
    ),
    "env interpolation": ({"name": "${oc.env:HOME}"}, "name", "holds an interpolation"),
    "nested interpolation": (
        {"trunk_kwargs": {"channels": ["${oc.decode:1}"]}},
        "trunk_kwargs.channels[0]",
        "holds an interpolation",
    ),
    "deep nesting": ({"trunk_kwargs": DEEP}, "trunk_kwargs" + ".a" * 16, "is nested deeper than 16 levels"),
    "tensor value": ({"dropout": torch.tensor(0.5)}, "dropout", "is a Tensor, not plain data"),
    "unknown parameter": ({"checkpoint_path": "x.pt"}, "checkpoint_path", "is not a parameter of HMR"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_configs_that_are_not_plain_model_settings_are_refused_on_load_and_on_save(
    tmp_path, mean_params, case
):
    change, key, says = REFUSED[case]
    config = {**hmr_config(mean_params), **change}
    model = HMR(**{k: v for k, v in hmr_config(mean_params).items() if not k.startswith("_")})
    path = write_raw(tmp_path / "bad.ckpt", config, model.state_dict())
    with pytest.raises(CheckpointError, match=rf"bad\.ckpt: config key '{re.escape(key)}' {says}"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=rf"never\.ckpt: config key '{re.escape(key)}' {says}"):
        save_checkpoint(tmp_path / "never.ckpt", model, config)
    assert not (tmp_path / "never.ckpt").exists()


def test_a_config_that_is_not_a_dict_is_refused(tmp_path, mean_params):
    path = write_raw(tmp_path / "list.ckpt", ["cemr.models.HMR"], {})
    with pytest.raises(CheckpointError, match=r"list\.ckpt: config key 'config' is a list, expected a dict"):
        load_checkpoint(path)


def test_a_model_that_cannot_be_built_names_the_checkpoint(tmp_path):
    config = {"_target_": "cemr.models.VideoEncoder", **TINY_VIDEO, "final_norm": "batch"}
    path = write_raw(tmp_path / "norm.ckpt", config, {})
    with pytest.raises(ValueError, match="final_norm must be 'norm' or 'fc_norm'") as error:
        load_checkpoint(path)
    assert any("norm.ckpt" in note for note in error.value.__notes__)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, mean_params, bad):
    config = hmr_config(mean_params)
    model = HMR(**{k: v for k, v in config.items() if not k.startswith("_")})
    path = save_checkpoint(tmp_path / "good.ckpt", model, config)
    state_dict = model.state_dict()
    state_dict["regressor.fc1.weight"][3, 5] = bad
    write_raw(tmp_path / "diverged.ckpt", config, state_dict)
    with pytest.raises(
        CheckpointError, match=r"diverged\.ckpt: tensor 'regressor\.fc1\.weight' holds NaN or inf values"
    ):
        load_checkpoint(path.with_name("diverged.ckpt"))
    head = {"weight": torch.full((2, 3), bad), "bias": torch.zeros(2)}
    write_raw(tmp_path / "head.ckpt", config, model.state_dict(), extra={"align_head": head})
    with pytest.raises(CheckpointError, match=r"head\.ckpt: tensor 'extra\.align_head\.weight' holds NaN"):
        load_checkpoint(tmp_path / "head.ckpt")
    assert load_checkpoint(path).report.ok  # the same model with finite weights loads


def test_non_finite_weights_are_refused_by_the_foreign_loaders(tmp_path):
    state_dict = VideoEncoder(**TINY_VIDEO).state_dict()
    state_dict["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    torch.save({"model": state_dict}, tmp_path / "videomae.pth")
    target = VideoEncoder(**TINY_VIDEO)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"videomae\.pth \(VideoMAE\): tensor 'blocks\.1\.attn\.qkv\.weight' holds NaN"
    ):
        load_videomae_checkpoint(tmp_path / "videomae.pth", target)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing was copied


@pytest.mark.parametrize(
    "name,kind",
    [
        ("hmr_small_synthetic_seed0.ckpt", HMR),
        ("vibe_small_synthetic_seed0.ckpt", VIBE),
        ("videomae_tiny_synthetic_seed0.ckpt", VideoEncoder),
    ],
)
def test_the_committed_checkpoints_still_load(tmp_path, mean_params, name, kind):
    overrides = {"mean_params": str(mean_params)} if kind is not VideoEncoder else {}
    loaded = load_checkpoint(REPO / "checkpoints" / name, **overrides)
    assert loaded.report.ok and loaded.report.loaded
    assert type(loaded.model) is kind


def test_a_checkpoint_never_makes_timm_download(tmp_path):
    from cemr.models import HMR, load_checkpoint, save_checkpoint

    mean_params = tmp_path / "mean.npz"
    write_mean_params(mean_params)
    config = {"_target_": "cemr.models.HMR", "mean_params": str(mean_params), **TINY_TRUNK}
    model = HMR(**{k: v for k, v in config.items() if k != "_target_"})
    path = save_checkpoint(tmp_path / "m.ckpt", model, config)
    payload = torch.load(path, weights_only=True)
    payload["config"]["pretrained"] = True
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert loaded.config["pretrained"] is False and loaded.report.ok
    payload["config"]["trunk"] = "hf-hub:someone/resnet18"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="'trunk' is 'hf-hub:someone/resnet18', a hub reference"):
        load_checkpoint(path)
