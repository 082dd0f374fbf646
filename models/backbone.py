"""CLIP backbone: encode frames and text with a loaded open_clip model.

Loading (weights, downloads, precision, TempMe's trained weights) is :mod:`models.factory`'s
job; this module only runs the model, at the dtype its weights were cast to: pixels and text
embeddings go in at that dtype, embeddings come out as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from models.precision import FP32_DEFAULT, PrecisionChoice
from models.text_tower import encode_text_tokens


@dataclass(frozen=True)
class FrameTokens:
    """Output of the ViT for a batch of frames.

    Attributes:
        embeddings: ``[B, E]`` L2-normalised per-frame embeddings (CLS -> ln_post -> proj).
        hidden: ``[B, 1 + N, W]`` hidden states after the last block (before ln_post);
            index 0 is the CLS token, 1..N the patch tokens in raster order.
        cls_attention: ``[B, N]`` attention of the CLS query over the patch keys in the last
            block, averaged over heads (rows sum to 1 minus the CLS self-attention).
    """

    embeddings: torch.Tensor
    hidden: torch.Tensor
    cls_attention: torch.Tensor


class ClipBackbone:
    """A loaded open_clip model plus what vidseek needs around it.

    The model is frozen and in eval mode. ``key`` identifies the weights so that catalog
    embeddings computed with other weights are recognised as stale (see
    :func:`models.factory.backbone_key`); ``precision`` is what the weights were cast to at load,
    and why (not part of the key: the same weights in bf16 and fp32 span the same space).
    ``text_runtime`` names where :meth:`encode_text` runs: ``"torch"``, or an ONNX Runtime tower
    set with :meth:`use_text_tower` (:mod:`models.text_onnx`).
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        tokenizer,
        name: str,
        key: str,
        device: torch.device,
        precision: PrecisionChoice = FP32_DEFAULT,
    ):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.key = key
        self.device = device
        self.precision = precision
        self.text_runtime = "torch"
        self._text_tower: Callable[[torch.Tensor], torch.Tensor] | None = None
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size: int = size if isinstance(size, int) else int(size[0])
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)

    # ----- geometry ----------------------------------------------------------------------
    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the ViT's matrices (float32, or bfloat16 / float16 when cast at load)."""
        return self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def num_patches(self) -> int:
        gh, gw = self.visual.grid_size
        return int(gh * gw)

    # ----- preprocessing -----------------------------------------------------------------
    def pixels_from_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[B, S, S, 3]`` (already resized + centre-cropped to ``image_size``)
        -> normalised pixels ``[B, 3, S, S]`` at the model's dtype, on its device (normalised in
        float32, cast once)."""
        x = torch.as_tensor(frames, device=self.device)
        if x.shape[-1] != 3 or x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(f"expected frames [B, {self.image_size}, {self.image_size}, 3], got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self.mean) / self.std).to(self.dtype)

    # ----- text --------------------------------------------------------------------------
    def use_text_tower(self, tower: Callable[[torch.Tensor], torch.Tensor], runtime: str) -> None:
        """Encode texts with ``tower`` (token ids ``[Q, C]`` -> features ``[Q, E]``, as
        :func:`models.text_tower.encode_text_tokens`) from now on; ``runtime`` names it."""
        self._text_tower, self.text_runtime = tower, runtime

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> ``[Q, E]`` L2-normalised float32 embeddings (a causal tower runs only up to
        the batch's last EOT token, see :func:`models.text_tower.encode_text_tokens`), through the
        tower set by :meth:`use_text_tower` when there is one (on the CPU), else the torch model."""
        tokens = self.tokenizer(list(texts))
        if self._text_tower is not None:
            return F.normalize(self._text_tower(tokens).float(), dim=-1)
        return F.normalize(encode_text_tokens(self.model, tokens.to(self.device)).float(), dim=-1)

    # ----- vision ------------------------------------------------------------------------
    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, S, S]`` -> block-0 input ``[B, 1 + N, W]`` (patchify, CLS, positions, ln_pre).

        The steps of open_clip's ``VisionTransformer.forward`` before its transformer, through the
        tower's public modules (patch dropout is the identity in eval mode)."""
        visual = self.visual
        x = visual.conv1(pixels.to(self.dtype)).flatten(2).transpose(1, 2)  # [B, N, W]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[..., W]`` (any float dtype, e.g. stored float32 summaries) -> joint-space
        vectors ``[..., E]`` at the model's dtype (ln_post then proj), not normalised."""
        x = self.visual.ln_post(hidden.to(self.dtype))
        return x @ self.visual.proj if self.visual.proj is not None else x

    @torch.inference_mode()
    def encode_frames(self, pixels: torch.Tensor) -> FrameTokens:
        """Full ViT forward over ``[B, 3, S, S]`` pixels.

        Blocks 0..L-2 run open_clip's own (fused) modules; the last block runs through
        :func:`models.vit_blocks.run_block` so its CLS attention row can be returned.
        """
        from models.vit_blocks import run_block

        x = self.embed_patches(pixels)
        blocks = self.visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        out = run_block(blocks[-1], x, return_attention=True)
        embeddings = F.normalize(self.project(out.x[:, 0]).float(), dim=-1)
        cls_attention = out.attention[:, :, 0, 1:].mean(dim=1)
        return FrameTokens(embeddings=embeddings, hidden=out.x, cls_attention=cls_attention)
