"""CLIP backbone: load an open_clip model and encode frames and text with it.

Weights come from an open_clip pretrained tag (downloaded once into the cache), a local
checkpoint file (works offline), or -- only when asked for explicitly with ``"random"`` --
a seeded random initialisation used by benchmarks and the offline demo.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
OFFLINE_HINT = (
    "On a machine without internet access, download the checkpoint elsewhere (e.g. "
    "open_clip_pytorch_model.bin from the model's Hugging Face page) and set "
    "VIDSEEK_PRETRAINED=/path/to/open_clip_pytorch_model.bin"
)
_registered_config_dirs: set[Path] = set()  # open_clip keeps a global registry; add each folder once


def backbone_key(model_name: str, weights_id: str) -> str:
    """Identity of a model plus its weights, e.g. ``ViT-B-32:openai``."""
    return f"{model_name}:{weights_id}"


def model_embed_dim(model_name: str, config_dir: Path | None = None) -> int:
    """Joint embedding width of an open_clip architecture, read from its config (no weights)."""
    register_model_configs(config_dir)
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise WeightsUnavailableError(f"unknown open_clip model {model_name!r}")
    return int(config["embed_dim"])


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be loaded (no network, unknown tag, bad file)."""


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
    embeddings computed with other weights are recognised as stale.
    """

    def __init__(self, model: open_clip.CLIP, tokenizer, name: str, weights_id: str, device: torch.device):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.key = backbone_key(name, weights_id)
        self.device = device
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
        -> normalised float pixels ``[B, 3, S, S]`` on the model's device."""
        x = torch.as_tensor(frames, device=self.device)
        if x.shape[-1] != 3 or x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(f"expected frames [B, {self.image_size}, {self.image_size}, 3], got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    # ----- text --------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> ``[Q, E]`` L2-normalised embeddings."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    # ----- vision ------------------------------------------------------------------------
    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, S, S]`` -> block-0 input ``[B, 1 + N, W]`` (patchify, CLS, positions, ln_pre)."""
        return self.visual._embeds(pixels)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[..., W]`` -> joint-space vectors ``[..., E]`` (ln_post then proj), not normalised."""
        x = self.visual.ln_post(hidden)
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def register_model_configs(config_dir: Path | None) -> None:
    """Make extra open_clip architecture configs (``*.json``) in ``config_dir`` loadable by name."""
    if config_dir is None:
        return
    folder = Path(config_dir).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"model config directory {config_dir} does not exist")
    if folder not in _registered_config_dirs:
        open_clip.add_model_config(folder)
        _registered_config_dirs.add(folder)


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make Hugging Face Hub calls use the local cache only, for the duration of the block."""
    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


def _hub_reachable(host: str = "huggingface.co") -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _create_with_pretrained_tag(model_name: str, tag: str, device: torch.device) -> open_clip.CLIP:
    """open_clip model with weights ``tag``: from the local cache if there, else downloaded once.

    Without network access this fails at once (instead of after the hub client's retries) with
    a message saying how to use a local checkpoint.
    """
    try:
        with _hub_offline():
            return open_clip.create_model(model_name, pretrained=tag, device=device)
    except Exception:  # not cached: download below
        pass
    if not _hub_reachable():
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights {model_name}/{tag}: they are not in the local cache and "
            f"huggingface.co cannot be reached (no network?). {OFFLINE_HINT}"
        )
    try:
        return open_clip.create_model(model_name, pretrained=tag, device=device)
    except Exception as exc:
        raise WeightsUnavailableError(f"could not fetch pretrained weights {model_name}/{tag} ({exc}). {OFFLINE_HINT}") from exc


def weights_identity(pretrained: str) -> str:
    """Stable name of the weights ``pretrained`` designates (a tag, a file fingerprint, or random)."""
    path = Path(pretrained).expanduser()
    if pretrained == RANDOM_WEIGHTS:
        return f"random-seed{RANDOM_SEED}"
    if path.is_file():
        return _file_fingerprint(path)
    return pretrained


def load_backbone(
    model_name: str,
    pretrained: str,
    device: str = "auto",
    config_dir: Path | None = None,
) -> ClipBackbone:
    """Load ``model_name`` (an open_clip architecture) with weights from ``pretrained``.

    ``pretrained`` is an open_clip tag (e.g. ``"openai"``; downloaded once and cached), a
    path to a local checkpoint (``open_clip_pytorch_model.bin`` or a ``.pt`` state dict), or
    ``"random"`` for an explicit, seeded random initialisation.

    Raises:
        WeightsUnavailableError: the weights cannot be fetched or read; the message says how
            to point vidseek at a local checkpoint.
    """
    register_model_configs(config_dir)
    if model_name not in open_clip.list_models():
        raise WeightsUnavailableError(
            f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models()[:20])}, ..."
        )
    dev = resolve_device(device)
    path = Path(pretrained).expanduser()
    if pretrained == RANDOM_WEIGHTS:
        log.warning("loading %s with RANDOM weights: embeddings are meaningless for search", model_name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(model_name, pretrained=None, device=dev)
    elif path.is_file():
        try:
            model = open_clip.create_model(model_name, pretrained=str(path), device=dev)
        except Exception as exc:  # open_clip raises plain RuntimeError/KeyError for bad files
            raise WeightsUnavailableError(f"cannot load checkpoint {path} into {model_name}: {exc}") from exc
    else:
        known_tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in known_tags:
            raise WeightsUnavailableError(
                f"VIDSEEK_PRETRAINED={pretrained!r} is neither a file nor a pretrained tag of {model_name} "
                f"(tags: {', '.join(known_tags) or 'none'}). {OFFLINE_HINT}"
            )
        model = _create_with_pretrained_tag(model_name, pretrained, dev)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipBackbone(model, tokenizer, model_name, weights_identity(pretrained), dev)
