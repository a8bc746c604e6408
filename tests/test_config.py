"""The config tree composes for every group choice, and bad choices fail with Hydra's message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from tests.conftest import REPO, compose_config

GROUP_CHOICES = {
    "backbone": ["hmr", "hmr_small", "vibe"],
    "dataset": ["synthetic", "3dpw", "h36m", "video"],
    "body": ["smpl", "synthetic"],
    "experiment": ["boa", "dynaboa", "cemr"],
    "trainer": ["cpu", "gpu", "ddp"],
    "logger": ["none", "csv", "wandb"],
}


@pytest.mark.parametrize("group,choice", [(g, c) for g, cs in GROUP_CHOICES.items() for c in cs])
def test_every_group_choice_composes_and_resolves(group, choice):
    cfg = compose_config("adapt", [f"{group}={choice}", "paths.output_dir=/tmp/out"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["adapter"]["levels"] in (2, 3)


def test_experiments_set_the_ancestors_hyper_parameters():
    boa = compose_config("adapt", ["experiment=boa"]).adapter
    # BOA's code: a teacher, random source labels in both steps, second order, no stopping
    assert (boa.levels, boa.teacher.enabled, boa.replay.enabled, boa.stopping.enabled) == (
        2,
        True,
        True,
        False,
    )
    assert boa.replay.inner and boa.replay.retrieval == "random" and not boa.inner.first_order
    dyna = compose_config("adapt", ["experiment=dynaboa"]).adapter
    assert dyna.levels == 2 and dyna.inner.lr == 8e-6 and dyna.inner.first_order
    assert dyna.outer.lr == 3e-6 and list(dyna.outer.betas) == [0.5, 0.9]
    assert dyna.teacher.ema == 0.1 and dyna.stopping.tau == 3.1e-4 and dyna.stopping.max_extra_steps == 7
    expected = {"keypoints_2d": 10.0, "shape_prior": 2e-6, "pose_prior": 1e-4, "teacher": 0.1, "motion": 0.8}
    assert {k: dyna.loss_weights[k] for k in expected} == expected
    assert dyna.loss_weights.replay == 0.1
    assert dyna.motion.interval == 5
    cemr = compose_config("adapt", ["experiment=cemr"]).adapter
    assert cemr.levels == 3 and cemr.inner.lr == 8e-6 and cemr.clip.enabled  # the paper's clip level
    assert list(boa.frozen) == list(dyna.frozen) == list(cemr.frozen) == []  # they adapt the whole network


@pytest.mark.parametrize("name", ["adapt", "train", "evaluate"])
def test_primary_configs_compose(name):
    overrides = ["run_dir=/tmp/x"] if name == "evaluate" else []
    cfg = compose_config(name, overrides)
    assert cfg.task_name == name


def test_invalid_choice_fails_with_hydra_message():
    with pytest.raises(ConfigCompositionException, match="Could not find 'backbone/resnet9000'"):
        compose_config("adapt", ["backbone=resnet9000"])


@pytest.mark.slow
def test_cli_prints_the_composed_job_config():
    cmd = [sys.executable, "adapt.py", "--cfg", "job", "dataset=3dpw", "adapter.levels=3", "backbone=vibe"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job = OmegaConf.create(out.stdout)
    assert job.dataset.name == "3dpw" and job.adapter.levels == 3 and job.backbone.name == "vibe"


@pytest.mark.slow
def test_cli_rejects_an_invalid_choice():
    cmd = [sys.executable, "adapt.py", "--cfg", "job", "dataset=kinetics"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Could not find 'dataset/kinetics'" in out.stderr
    assert "Available options in 'dataset'" in out.stderr


def test_3dpw_selects_real_smpl_and_a_mismatched_body_is_refused():
    from cemr.data.prepare import check_body_matches_dataset

    cfg = compose_config("adapt", ["dataset=3dpw"])
    assert cfg.body.name == "smpl"
    check_body_matches_dataset(cfg)
    wrong = compose_config("adapt", ["dataset=3dpw", "body=synthetic"])
    with pytest.raises(ValueError, match="add body=smpl"):
        check_body_matches_dataset(wrong)


def test_a_wandb_run_is_named_by_its_overrides_and_grouped_by_its_sweep():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cemr.runtime import wandb_identity
    from tests.conftest import CONFIG_DIR

    overrides = ["adapter.levels=2", "paths.data_dir=/somewhere", "logger=wandb", "adapter.outer.lr=1e-4"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="adapt", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = "multirun/2026-11-30/12-00-00"
    HydraConfig.instance().set_config(cfg)
    try:
        identity = wandb_identity(cfg.logger.wandb, "adapt")
        assert identity == {
            "name": "adapter.levels=2 adapter.outer.lr=1e-4",  # paths and logger choices name nothing
            "group": "multirun/2026-11-30/12-00-00",
            "job_type": "adapt",
        }
        with open_dict(cfg):
            cfg.logger.wandb.name = "my run"
        assert wandb_identity(cfg.logger.wandb, "adapt")["name"] == "my run"
    finally:
        HydraConfig.instance().cfg = None
