"""Model factory: open_clip weights -> :class:`~models.backbone.ClipBackbone`, TempMe's trained
weights -> a new backbone plus encoder, and the names of embedding spaces.

As open_clip keeps ``factory.py`` and ``pretrained.py`` apart from its model code, everything
here is about *which* weights a model gets and where they come from; ``models.backbone`` only
runs a loaded model.

Weights come from an open_clip pretrained tag (downloaded once into the Hugging Face cache), a
local checkpoint file (works offline), or -- only when asked for explicitly with ``"random"``
-- a seeded random initialisation used by benchmarks and the offline demo. The weights are cast
once, here, to the precision chosen by :mod:`models.precision`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
import re
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from models.backbone import ClipBackbone
from models.precision import FP32, CpuCapability, choose_precision, detect_cpu_capability
from models.weights import RANDOM_WEIGHTS, WeightsUnavailableError  # re-exported: the factory raises it

log = logging.getLogger(__name__)

RANDOM_SEED = 0
OFFLINE_HINT = (
    "On a machine without internet access, download the checkpoint elsewhere (e.g. "
    "open_clip_pytorch_model.bin from the model's Hugging Face page) and set "
    "VIDSEEK_PRETRAINED=/path/to/open_clip_pytorch_model.bin"
)
HF_WEIGHTS_FILE = "open_clip_pytorch_model.bin"  # open_clip's name when a hub entry gives none
# What a broken or mismatched checkpoint makes torch / open_clip raise.
CHECKPOINT_ERRORS = (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError)
_registered_config_dirs: set[Path] = set()  # open_clip keeps a global registry; add each folder once


# ----- names of weights and embedding spaces -----------------------------------------------------
def file_fingerprint(path: Path) -> str:
    """``file-<16 hex>``: the first 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{digest.hexdigest()[:16]}"


def weights_identity(pretrained: str) -> str:
    """Stable name of the weights ``pretrained`` designates (a tag, a file fingerprint, or random)."""
    path = Path(pretrained).expanduser()
    if pretrained == RANDOM_WEIGHTS:
        return f"random-seed{RANDOM_SEED}"
    if path.is_file():
        return file_fingerprint(path)
    return pretrained


def backbone_key(model_name: str, weights_id: str, tempme_id: str | None = None) -> str:
    """Identity of a model plus its weights, e.g. ``ViT-B-32:openai`` or, with TempMe's trained
    LoRA folded in, ``ViT-B-32:openai+tempme-file-...``. Precision is not part of it: the same
    weights in bf16 and fp32 give the same embedding space."""
    key = f"{model_name}:{weights_id}"
    return key if tempme_id is None else f"{key}+tempme-{tempme_id}"


def space_key(weights_key: str, encoder_name: str) -> str:
    """Names an embedding space: vectors with different keys are not comparable."""
    return f"{weights_key}|{encoder_name}"


def embedding_space_key(model_name: str, pretrained: str, encoder_name: str, tempme_weights: Path | None = None) -> str:
    """The embedding space of ``encoder_name`` over ``model_name`` with weights ``pretrained`` (and
    TempMe's trained weights, which only the ``tempme`` encoder applies), without loading anything.
    Equal to ``space_key(encoder.backbone.key, encoder.name)`` of the encoder built from the same."""
    tempme_id = None
    if encoder_name == "tempme" and tempme_weights is not None:
        tempme_id = weights_identity(str(tempme_weights))
    return space_key(backbone_key(model_name, weights_identity(pretrained), tempme_id), encoder_name)


# ----- open_clip architectures and weights ---------------------------------------------------------
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


def model_embed_dim(model_name: str, config_dir: Path | None = None) -> int:
    """Joint embedding width of an open_clip architecture, read from its config (no weights)."""
    register_model_configs(config_dir)
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise WeightsUnavailableError(f"unknown open_clip model {model_name!r}")
    return int(config["embed_dim"])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fetch_pretrained(model_name: str, tag: str) -> str:
    """Local path of open_clip's pretrained weights ``tag`` of ``model_name``: from the Hugging Face
    cache if there (no network call), else downloaded once into it.

    Raises:
        WeightsUnavailableError: not cached and the download fails (no network, hub error); the
            message says how to use a local checkpoint instead.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    hub = cfg.get("hf_hub", "")
    try:
        if hub:
            repo_id, filename = os.path.split(hub)
            filename = filename or HF_WEIGHTS_FILE
            try:
                return hf_hub_download(repo_id, filename, local_files_only=True)
            except LocalEntryNotFoundError:
                log.info("downloading pretrained weights %s/%s from %s", model_name, tag, repo_id)
                return hf_hub_download(repo_id, filename)
        if cfg.get("url"):
            return open_clip.download_pretrained_from_url(cfg["url"])
    except (LocalEntryNotFoundError, HfHubHTTPError, urllib.error.URLError, OSError) as exc:
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights {model_name}/{tag}: they are not in the local cache and the "
            f"download failed (no network?): {exc}. {OFFLINE_HINT}"
        ) from exc
    raise WeightsUnavailableError(f"open_clip names no download location for {model_name}/{tag}. {OFFLINE_HINT}")


def load_backbone(
    model_name: str,
    pretrained: str,
    device: str = "auto",
    config_dir: Path | None = None,
    precision: str = FP32,
    cpu_probe: Callable[[], CpuCapability] = detect_cpu_capability,
) -> ClipBackbone:
    """Load ``model_name`` (an open_clip architecture) with weights from ``pretrained``, cast once
    to ``precision`` (``auto``, ``fp32``, ``bf16`` or ``fp16``, see :func:`models.precision.choose_precision`;
    ``cpu_probe`` answers for ``auto`` on CPU). The cast is open_clip's own (``create_model``'s
    ``precision``: OpenAI's mixed precision, matrices in fp16/bf16, LayerNorm computed in fp32).

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
    choice = choose_precision(precision, dev, cpu_probe)
    log.info("%s runs at %s", model_name, choice.describe(), extra={"precision": choice.precision, "reason": choice.reason})
    mode = choice.precision
    if pretrained == RANDOM_WEIGHTS:
        log.warning("loading %s with RANDOM weights: embeddings are meaningless for search", model_name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(model_name, pretrained=None, device=dev, precision=mode)
    else:
        if not path.is_file():
            known_tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in known_tags:
                raise WeightsUnavailableError(
                    f"VIDSEEK_PRETRAINED={pretrained!r} is neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {', '.join(known_tags) or 'none'}). {OFFLINE_HINT}"
                )
            path = Path(fetch_pretrained(model_name, pretrained))
        try:
            model = open_clip.create_model(model_name, pretrained=str(path), device=dev, precision=mode)
        except CHECKPOINT_ERRORS as exc:
            raise WeightsUnavailableError(f"cannot load checkpoint {path} into {model_name}: {exc}") from exc
    tokenizer = open_clip.get_tokenizer(model_name)
    key = backbone_key(model_name, weights_identity(pretrained))
    return ClipBackbone(model, tokenizer, model_name, key, dev, choice)


# ----- TempMe's trained weights ---------------------------------------------------------------------
_TEMPME_KEY = re.compile(
    r"^clip\.(?P<tower>visual\.)?transformer\.resblocks\.(?P<layer>\d+)\."
    r"(?P<name>attn\.TVPt_LoRA_a|attn\.TVPt_LoRA_b|TVPt_Video_Positional_embedding)$"
)


@dataclass(frozen=True)
class TempMeWeights:
    """TempMe's trained parameters.

    Attributes:
        visual_lora: block -> ``(A [R, W], B [3W, R])`` of the vision tower.
        text_lora: block -> ``(A, B)`` of the text tower.
        video_positions: ClipMe block -> ``[P, W]`` positional embedding of the ``P`` clips
            entering that block in a training segment (12, 6, 3 for the defaults).
        fingerprint: identifies the checkpoint file.
    """

    visual_lora: dict[int, tuple[torch.Tensor, torch.Tensor]]
    text_lora: dict[int, tuple[torch.Tensor, torch.Tensor]]
    video_positions: dict[int, torch.Tensor]
    fingerprint: str


def load_tempme_weights(path: str | Path) -> TempMeWeights:
    """Read TempMe's trained parameters from a checkpoint saved by the official code.

    The official ``save_model`` writes ``VTRModel.state_dict()``; the trained parameters are
    those named ``TVPt_*`` (``prep_optimizer`` freezes all others, so the CLIP weights in the
    file equal the CLIP TempMe started from -- load the backbone with those). Key mapping:

    * ``clip.visual.transformer.resblocks.{i}.attn.TVPt_LoRA_a`` ``[R, W]`` and ``..._b``
      ``[3W, R]`` -> ``visual_lora[i]``: q, k, v of block ``i`` become
      ``in_proj(x) + x @ A.T @ B.T`` (rank ``R`` = ``--lora_dim`` 8, no alpha scaling), i.e.
      ``in_proj_weight + B @ A``.
    * ``clip.transformer.resblocks.{i}.attn.TVPt_LoRA_a`` / ``_b`` -> ``text_lora[i]``, the
      same on the text tower.
    * ``clip.visual.transformer.resblocks.{l}.TVPt_Video_Positional_embedding``
      ``[1, P, 1, W]`` -> ``video_positions[l]`` ``[P, W]``: added to every token of clip ``p``
      right before the cross-clip merge of ClipMe block ``l``.

    Other keys are ignored; an unexpected ``TVPt_*`` key or an inconsistent shape raises
    ``ValueError``.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    lora: dict[tuple[bool, int], dict[str, torch.Tensor]] = {}
    positions: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        match = _TEMPME_KEY.match(key)
        if match is None:
            if "TVPt_" in key:
                raise ValueError(f"unexpected TempMe parameter {key!r} in {path}")
            continue
        layer, name = int(match["layer"]), match["name"]
        if name == "TVPt_Video_Positional_embedding":
            if match["tower"] is None or value.dim() != 4 or value.shape[0] != 1 or value.shape[2] != 1:
                raise ValueError(f"{key}: expected a visual [1, P, 1, W] tensor, got {tuple(value.shape)}")
            positions[layer] = value[0, :, 0].float()
        else:
            lora.setdefault((match["tower"] is not None, layer), {})[name[-1]] = value.float()
    visual, text = {}, {}
    for (is_visual, layer), ab in lora.items():
        if set(ab) != {"a", "b"}:
            raise ValueError(f"{path}: block {layer} has only LoRA {'/'.join(ab)}")
        a, b = ab["a"], ab["b"]
        if a.dim() != 2 or b.shape != (3 * a.shape[1], a.shape[0]):
            raise ValueError(f"{path}: block {layer} LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit")
        (visual if is_visual else text)[layer] = (a, b)
    if not visual and not positions:
        raise ValueError(f"{path} holds no TempMe parameters (TVPt_*)")
    return TempMeWeights(visual, text, positions, file_fingerprint(path))


@torch.no_grad()
def with_tempme_lora(backbone: ClipBackbone, weights: TempMeWeights) -> ClipBackbone:
    """A new backbone: ``backbone``'s model copied, with TempMe's LoRA folded into the
    ``in_proj_weight`` of both towers; ``backbone`` itself is left as it was.

    ``in_proj(x) + (x @ A.T) @ B.T`` equals ``x @ (W + B @ A).T + bias`` exactly (up to float
    rounding; the sum is formed in float32 and cast once to the weights' dtype), so folding
    costs nothing at run time, and text queries -- encoded by the same backbone -- get the text
    LoRA they were trained with. The key gains the weights' fingerprint so stored embeddings
    from other weights are seen as stale; a backbone that already carries TempMe weights raises
    ``ValueError``.
    """
    if "+tempme-" in backbone.key:
        raise ValueError(f"backbone {backbone.key} already carries TempMe weights")
    text = getattr(backbone.model, "transformer", None)
    if weights.text_lora and text is None:
        raise ValueError(f"{backbone.name} has no open_clip text transformer for TempMe's text LoRA")
    towers = {"visual": (backbone.visual.transformer.resblocks, weights.visual_lora)}
    if weights.text_lora:
        towers["text"] = (text.resblocks, weights.text_lora)
    for tower, (blocks, lora) in towers.items():
        for layer, (a, b) in lora.items():
            if layer >= len(blocks):
                raise ValueError(f"TempMe {tower} LoRA for block {layer}, the tower has {len(blocks)}")
            w = blocks[layer].attn.in_proj_weight
            if w.shape != (b.shape[0], a.shape[1]):
                raise ValueError(f"TempMe {tower} LoRA of block {layer} does not fit in_proj {tuple(w.shape)}")
    model = copy.deepcopy(backbone.model)
    folded = {"visual": model.visual.transformer.resblocks}
    if weights.text_lora:
        folded["text"] = model.transformer.resblocks
    for tower, (_, lora) in towers.items():
        for layer, (a, b) in lora.items():
            w = folded[tower][layer].attn.in_proj_weight
            w.copy_((w.float() + (b @ a).to(w.device)).to(w.dtype))
    key = f"{backbone.key}+tempme-{weights.fingerprint}"
    return ClipBackbone(model, backbone.tokenizer, backbone.name, key, backbone.device, backbone.precision)


def tempme_encoder(backbone: ClipBackbone, weights: str | Path | None = None, config=None):
    """TempMe over ``backbone``; with a trained checkpoint ``weights`` (:func:`load_tempme_weights`)
    the encoder runs over a new backbone carrying its LoRA (:func:`with_tempme_lora`) and adds its
    video positional embeddings, which must be for ``config.clip_layers``."""
    from models.tempme import TempMeConfig, TempMeEncoder  # tempme imports the encoders module

    config = config or TempMeConfig()
    if weights is None:
        return TempMeEncoder(backbone, config)
    loaded = load_tempme_weights(weights)
    if loaded.video_positions and set(loaded.video_positions) != set(config.clip_layers):
        raise ValueError(
            f"{weights} has video positions for blocks {sorted(loaded.video_positions)}, "
            f"the config merges clips at {list(config.clip_layers)}"
        )
    if any(p.shape[1] != backbone.width for p in loaded.video_positions.values()):
        raise ValueError(f"{weights}: video positional embeddings do not match width {backbone.width}")
    return TempMeEncoder(with_tempme_lora(backbone, loaded), config, positions=loaded.video_positions)
