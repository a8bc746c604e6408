"""What a wandb dashboard shows of an adaptation run besides the logged losses: the emitted mesh over
the current crop every N frames, and at the end the final metrics (summary), evaluate.py's plots and
overlay frames. Everything here is a no-op without an active wandb run (logger=wandb)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from cemr.data.datamodule import IMAGENET_MEAN, IMAGENET_STD
from cemr.geometry import BBOX_UNIT
from cemr.viz.overlay import draw_mesh, full_image_camera


def active_run():
    import wandb

    return wandb.run


def crop_overlay(
    img: torch.Tensor, vertices: np.ndarray, faces: np.ndarray, cam: np.ndarray, focal_length: float
):
    """(3, S, S) ImageNet-normalised crop -> (S, S, 3) uint8 with the mesh of crop camera `cam` on it."""
    crop = img.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    crop = (np.clip(crop, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    size = crop.shape[0]
    # the crop as its own full image: a box of side `size` centred on the crop centre (pixel size/2)
    camera, translation = full_image_camera(
        cam, np.array([size / 2, size / 2]), size / BBOX_UNIT, focal_length, size, size, size
    )
    return draw_mesh(crop, vertices, faces, camera, translation)[0]


class WandbStreamOverlay(L.Callback):
    """Every `every` frames of the stream, the emitted mesh over the frame's crop as `stream/overlay`
    and, on scored targets, the per-frame PA-MPJPE so far as `stream/errors_over_time`."""

    def __init__(self, body_model, focal_length: float, every: int):
        self.body_model, self.focal_length, self.every = body_model, focal_length, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = active_run()
        if run is None or "padding" in batch or pl_module.frames_done % self.every:
            return
        import wandb

        record = pl_module.records[-1]  # its last row is this frame's (a packed chunk holds many)
        pose = record["pose"][-1:].to(self.body_model.faces.device)
        with torch.no_grad():
            body = self.body_model(
                betas=record["betas"][-1:].to(pose), body_pose=pose[:, 3:], global_orient=pose[:, :3]
            )
        image = crop_overlay(
            batch["img"][0],
            body.vertices[0].double().cpu().numpy(),
            self.body_model.faces.cpu().numpy(),
            record["cam"][-1].numpy(),
            self.focal_length,
        )
        media = {"stream/overlay": wandb.Image(image, caption=f"frame {pl_module.frames_done}")}
        if pl_module.frame_pa_mpjpe:
            media["stream/errors_over_time"] = errors_so_far(pl_module.frame_pa_mpjpe)
        run.log(media)


def errors_so_far(frame_pa_mpjpe: list[float]):
    """The adapted model's per-frame PA-MPJPE up to now as a wandb image (the figure is closed)."""
    import matplotlib.pyplot as plt
    import wandb

    from cemr.evaluation.plots import errors_over_time

    fig = errors_over_time([], {"pa_mpjpe": np.asarray(frame_pa_mpjpe)}, None)
    image = wandb.Image(fig)
    plt.close(fig)
    return image


def publish_run(metrics: dict[str, float], run_dir: Path) -> None:
    """Final metrics into the wandb summary, evaluate.py's plots and a few overlay frames as images,
    then close the wandb run (a sweep's next job opens its own)."""
    run = active_run()
    if run is None:
        return
    import wandb

    run.summary.update(metrics)
    images = {f"plots/{p.stem}": p for p in sorted((run_dir / "plots").glob("*.png"))}
    frames = sorted((run_dir / "overlays").glob("frame_*.png"))
    images.update({f"overlays/{p.stem}": p for p in frames[:: max(1, len(frames) // 4)][:4]})
    if images:
        run.log({name: wandb.Image(str(path)) for name, path in images.items()})
    wandb.finish()
