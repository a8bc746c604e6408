"""VideoMAE-style video ViT (FORMATS.md section 10) and its masked-autoencoder pretraining task.

Tubelet patch embedding (Conv3d, kernel = stride = (2, p, p)), a fixed sinusoid position table,
timm transformer blocks with VideoMAE's attention bias (q and v biases, k bias fixed at zero) and
mean pooling. Parameter names match the official checkpoints: `patch_embed.proj`,
`blocks.{i}.{norm1,attn.qkv,attn.q_bias,attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2}`, then
`norm` (pretraining layout) or `fc_norm` (fine-tuned layout); the pretraining wrapper adds
`encoder.` and the decoder keys.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LayerNorm = functools.partial(nn.LayerNorm, eps=1e-6)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, N, D) fixed table: angle = n / 10000^(2 floor(j/2) / D), sin for even j, cos for odd j."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)[None]


class VideoMAEAttention(Attention):
    """timm attention with VideoMAE's bias: `qkv` has no bias; learned `q_bias`, `v_bias`; k bias zero."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **kwargs)
        self.q_bias = nn.Parameter(torch.zeros(self.attn_dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(self.attn_dim)) if qkv_bias else None

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, _ = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
        )
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(x))


def make_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float
) -> nn.ModuleList:
    """`depth` pre-norm timm Blocks (LayerNorm eps 1e-6, GELU) with VideoMAE attention."""
    drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
    return nn.ModuleList(
        Block(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path=drop_path[i],
            norm_layer=LayerNorm,
            attn_layer=VideoMAEAttention,
        )
        for i in range(depth)
    )


def init_weights(module: nn.Module) -> None:
    """VideoMAE pretraining init: xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TubeletEmbed(nn.Module):
    """clip (B, 3, T, H, W) -> tokens (B, N, D), N = (T / tubelet) (H / p) (W / p) in (t, h, w) order."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int, dim: int) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames "
                f"{num_frames} a multiple of tubelet_size {tubelet_size}"
            )
        self.input_shape = (3, num_frames, img_size, img_size)
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.ndim != 5 or tuple(clip.shape[1:]) != self.input_shape:
            raise ValueError(
                f"video encoder expects clips of shape (B, C, T, H, W) = "
                f"(B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(clip.shape)}"
            )
        return self.proj(clip).flatten(2).transpose(1, 2)


class VideoEncoder(nn.Module):
    """VideoMAE ViT encoder: clip (B, 3, T, H, W), ImageNet-normalised RGB -> embedding (B, D).

    `final_norm`: 'norm' (the self-supervised pretraining layout: LayerNorm on every token, then the
    token mean) or 'fc_norm' (the fine-tuned layout: token mean, then LayerNorm).
    `pretrain`: settings of its masked-autoencoder pretraining (`decoder_embed_dim`,
    `decoder_depth`, `decoder_num_heads`, `mask_ratio`), used by `VideoMAEPretrainer.from_encoder`.
    """

    def __init__(
        self,
        name: str = "video_encoder",
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        final_norm: str = "norm",
        pretrain: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if final_norm not in ("norm", "fc_norm"):
            raise ValueError(f"final_norm must be 'norm' or 'fc_norm', got '{final_norm}'")
        self.name = name
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.final_norm = final_norm
        self.pretrain = dict(pretrain or {})
        self.patch_embed = TubeletEmbed(img_size, patch_size, num_frames, tubelet_size, embed_dim)
        self.num_tokens = self.patch_embed.grid[0] * self.patch_embed.grid[1] * self.patch_embed.grid[2]
        self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, embed_dim), persistent=False)
        self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = LayerNorm(embed_dim) if final_norm == "norm" else None
        self.fc_norm = LayerNorm(embed_dim) if final_norm == "fc_norm" else None
        self.apply(init_weights)

    def forward_tokens(self, clip: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """clip (B, 3, T, H, W) -> tokens (B, N_vis, D) after the blocks (and `norm` in that layout).

        visible: optional (B, N) bool, True for the tokens to encode; every row must keep the same count.
        """
        x = self.patch_embed(clip)
        x = x + self.pos_embed.to(x.dtype)
        if visible is not None:
            x = x[visible].reshape(x.shape[0], -1, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        return self.norm(x) if self.norm is not None else x

    def at_own_resolution(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, 3, T, H, W) resized to the encoder's frame size (bilinear; halving averages 2 x 2
        pixels; frames kept), so one encoder serves backbones of any crop size (112 or 224 px)."""
        size = self.patch_embed.input_shape[2:]
        if clip.ndim != 5 or tuple(clip.shape[-2:]) == size:
            return clip  # the patch embedding reports any other shape problem
        b, c, t = clip.shape[:3]
        frames = clip.transpose(1, 2).flatten(0, 1)  # (B T, 3, H, W)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        return frames.unflatten(0, (b, t)).transpose(1, 2)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, 3, T, H, W) at any frame size -> (B, D) mean-pooled embedding."""
        pooled = self.forward_tokens(self.at_own_resolution(clip)).mean(dim=1)
        return self.fc_norm(pooled) if self.fc_norm is not None else pooled


def tube_mask(
    batch_size: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, N) bool, True = masked: int(ratio * h * w) random patches per sample, the same at every time."""
    t, h, w = grid
    num_masked = int(mask_ratio * h * w)
    order = torch.rand(batch_size, h * w, generator=generator).argsort(dim=1)
    masked = torch.zeros(batch_size, h * w, dtype=torch.bool)
    masked.scatter_(1, order[:, :num_masked], True)
    return masked.repeat(1, t).to(device)


def tube_targets(
    clip: torch.Tensor, patch_size: int, tubelet_size: int, normalize: bool = True
) -> torch.Tensor:
    """ImageNet-normalised clip (B, 3, T, H, W) -> per-token pixel targets (B, N, tubelet * p * p * 3).

    Pixels are un-normalised to [0, 1]; each tube is flattened in (t, h, w, c) order and, with
    `normalize`, standardised per channel over its pixels (unbiased std + 1e-6), as VideoMAE.
    """
    mean = clip.new_tensor(IMAGENET_MEAN)[None, :, None, None, None]
    std = clip.new_tensor(IMAGENET_STD)[None, :, None, None, None]
    video = clip * std + mean
    b, c, t, h, w = video.shape
    p, q = patch_size, tubelet_size
    tubes = video.reshape(b, c, t // q, q, h // p, p, w // p, p)
    # -> (B, t', h', w', q, p, p, C): token order (t, h, w), in-tube order (t, h, w) then channel
    tubes = tubes.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, q * p * p, c)
    if normalize:
        tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (
            tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
        )
    return tubes.flatten(2)


class VideoMAEDecoder(nn.Module):
    """VideoMAE's pretraining decoder: blocks, `norm`, `head` to tubelet * p * p * 3 pixel values."""

    def __init__(
        self, embed_dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, 0.0)
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        """x (B, N, D) -> predictions (B, num_predicted, out_dim) for the last `num_predicted` tokens."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -num_predicted:]))


class VideoMAEPretrainer(nn.Module):
    """Masked-autoencoder pretraining of a VideoEncoder (tube masking, normalised pixel targets, MSE)."""

    def __init__(
        self,
        encoder: VideoEncoder,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mask_ratio: float = 0.9,
        normalize_target: bool = True,
    ) -> None:
        super().__init__()
        if encoder.final_norm != "norm":
            raise ValueError(
                "VideoMAE pretraining normalises the encoder's tokens with `norm`; build the encoder "
                f"with final_norm='norm' (got '{encoder.final_norm}')"
            )
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.normalize_target = normalize_target
        out_dim = 3 * encoder.tubelet_size * encoder.patch_size**2
        self.decoder = VideoMAEDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, out_dim)
        self.encoder_to_decoder = nn.Linear(encoder.embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sinusoid_table(encoder.num_tokens, decoder_embed_dim), persistent=False
        )
        self.decoder.apply(init_weights)
        nn.init.xavier_uniform_(self.encoder_to_decoder.weight)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    @classmethod
    def from_encoder(cls, encoder: VideoEncoder, **overrides: Any) -> VideoMAEPretrainer:
        """Build with the decoder settings stored in `encoder.pretrain` (overridable)."""
        return cls(encoder, **{**encoder.pretrain, **overrides})

    def make_mask(
        self, batch_size: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """A tube mask (B, N) for this encoder's token grid at `mask_ratio`."""
        return tube_mask(batch_size, self.encoder.patch_embed.grid, self.mask_ratio, generator, device)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """clip (B, 3, T, H, W), mask (B, N) True = masked -> pixels of the masked tokens (B, N_mask, P)."""
        b = clip.shape[0]
        x_vis = self.encoder_to_decoder(self.encoder.forward_tokens(clip, visible=~mask))
        pos = self.decoder_pos_embed.to(x_vis.dtype).expand(b, -1, -1)
        dim = pos.shape[-1]
        pos_vis = pos[~mask].reshape(b, -1, dim)
        pos_masked = pos[mask].reshape(b, -1, dim)
        tokens = torch.cat([x_vis + pos_vis, self.mask_token.to(x_vis.dtype) + pos_masked], dim=1)
        return self.decoder(tokens, pos_masked.shape[1])

    def loss(self, clip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error between predicted and target pixels over the masked tokens."""
        clip = self.encoder.at_own_resolution(clip)
        with torch.no_grad():
            target = tube_targets(
                clip.float(), self.encoder.patch_size, self.encoder.tubelet_size, self.normalize_target
            )
            target = target[mask].reshape(clip.shape[0], -1, target.shape[-1])
        prediction = self(clip, mask)
        return F.mse_loss(prediction.float(), target)
