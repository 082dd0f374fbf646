"""LLaVA-OneVision as a yes/no reranker over HoliTom-compressed video tokens: the model, its loading and
its vision side.

A video LLM of the LLaVA-OneVision family (Hugging Face ``LlavaOnevisionForConditionalGeneration``:
SigLIP vision tower -> 2-layer projector -> Qwen2) scores each candidate as P("yes") to
"Does this video show: {query}? Answer yes or no." Its visual tokens are never recomputed at query
time: ingestion stores a summary in the LLM's own visual space (:meth:`LlavaReranker.summarize`, keyed by
:func:`llm_summary_key`), and prefill runs HoliTom's inner-LLM merge (:mod:`models.rerankers.prefill`, the
prompt and prefill as pure functions). Follows the official HoliTom code (github.com/cokeshao/HoliTom),
outer-LLM step, ``holitom/llava_arch.py`` (``prepare_inputs_labels_for_multimodal``): the vision tower's
feature layer -> ``mm_projector`` -> 2x2 bilinear pooling (``get_2dPool``; HF ``apply_pooling``) of both
the features and the tower's attention (the feature layer's softmax attention averaged over heads and
queries, ``siglip_encoder.py`` with ``WRAPPER=holitom``), then :func:`models.holitom.holitom`. With
LLaVA-OV's ``mm_newline_position="one_token"`` one ``image_newline`` follows the video tokens.

Deviation: frames reach the vision tower resized straight to its square input (as LLaVA-OV's video
processor does), but from the frames ingestion decoded for CLIP (short side 224), so they are upsampled.

:class:`LazyLlm` loads the model once per process, on first use, for ingestion and reranking alike.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import SUMMARIZERS
from models.rerankers.prefill import (
    NO_WORDS,
    YES_WORDS,
    InnerMergeParams,
    PrefillOutput,
    assemble,
    prefill,
    prompt_texts,
    yes_probability,
)
from models.summary import VideoSummary, summarize

SIGLIP_MEAN = (0.5, 0.5, 0.5)  # LLaVA-OV's image processor (SigLIP) normalisation
SIGLIP_STD = (0.5, 0.5, 0.5)


class LlmUnavailableError(RuntimeError):
    """The video LLM cannot be loaded (no weights offline, unknown id, bad directory, wrong architecture)."""


@dataclass(frozen=True)
class VisualFeatures:
    """A video's visual tokens in the LLM's input space, before any compression.

    Attributes:
        tokens: ``[T, N, D]`` projector outputs after 2x2 pooling (``N = ceil(g / 2) ** 2`` for a ``g x g`` grid).
        attention: ``[T, N]`` the feature layer's attention each token receives, pooled the same way.
    """

    tokens: torch.Tensor
    attention: torch.Tensor


@dataclass(frozen=True)
class ScoreOutput:
    """P("yes") of each candidate and the prefill that produced it."""

    p_yes: torch.Tensor
    prefill: PrefillOutput


# ----- vision side (ingestion) -----------------------------------------------------------------


def pixels_for_tower(images: np.ndarray | torch.Tensor, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB frames ``[T, H, W, 3]`` -> ``[T, 3, size, size]`` resized (bicubic, antialiased) straight to
    the tower's square input and normalised with SigLIP's mean/std, as LLaVA-OV's video processor does."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    mean = torch.tensor(SIGLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SIGLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device=device, dtype=dtype)


def received_attention(attention_module: nn.Module, layer_norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a SigLIP encoder layer over its input ``hidden`` ``[B, N, C]``, averaged over
    heads and queries: how much attention each token receives, ``[B, N]`` (HoliTom's
    ``attn_weights.mean(dim=1).mean(dim=1)``)."""
    x = layer_norm(hidden)
    b, n, _ = x.shape
    heads, dim = attention_module.num_heads, attention_module.head_dim
    q = attention_module.q_proj(x).view(b, n, heads, dim).transpose(1, 2)
    k = attention_module.k_proj(x).view(b, n, heads, dim).transpose(1, 2)
    weights = ((q @ k.transpose(-2, -1)) * attention_module.scale).softmax(dim=-1, dtype=torch.float32)
    return weights.mean(dim=(1, 2))


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """Index into ``(embeddings, layer 1 out, ..., layer L out)`` that ``vision_feature_layer`` (an int,
    negative from the end as in HF) designates; at least 1 (a layer must have run)."""
    index = vision_feature_layer if vision_feature_layer >= 0 else num_layers + 1 + vision_feature_layer
    if not 1 <= index <= num_layers:
        raise ValueError(f"vision_feature_layer {vision_feature_layer} does not name a layer output of {num_layers}")
    return index


# ----- the model -------------------------------------------------------------------------------


def llm_space_summary(features: VisualFeatures, times: Sequence[float], method: str, **params: Any) -> VideoSummary:
    """Compress a video's LLM-space tokens for storage (the outer-LLM step): :func:`models.summary.summarize`
    over ``[T, N, D]`` with the tower attention. VQToken codes are stored as the means of their *raw*
    tokens (``code_vectors="raw"``), because without VQToken's trained VQ-Attention the LLM has to read
    them as ordinary visual tokens, at the projector's scale. Positions are indices on the pooled grid.
    """
    if method not in SUMMARIZERS:
        raise ValueError(f"unknown LLM summary method {method!r}; expected one of {SUMMARIZERS.names()}")
    return summarize(method, features.tokens.float(), features.attention.float(), list(times), code_vectors="raw", **params)


class LlavaReranker:
    """A loaded LLaVA-OneVision model plus its tokenizer, as a yes/no video scorer.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (eval mode is set here).
        tokenizer: its tokenizer; ``Yes``/``yes``/``No``/``no`` must each be one token (those that are not
            are left out, at least one of each is needed).
        name: model id or directory.
        inner: HoliTom's inner merge, or None for plain prefill.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, inner: InnerMergeParams | None = InnerMergeParams()):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.inner = inner
        text_config = model.config.text_config
        if inner is not None and inner.layer >= text_config.num_hidden_layers:
            raise ValueError(f"inner merge layer {inner.layer} >= the LLM's {text_config.num_hidden_layers} layers")
        self.yes_ids = self._single_token_ids(YES_WORDS)
        self.no_ids = self._single_token_ids(NO_WORDS)
        if not self.yes_ids or not self.no_ids:
            raise ValueError("the tokenizer has no single-token 'yes'/'no' answer words")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def tokens_per_frame(self) -> int:
        grid = self.image_size // int(self.model.config.vision_config.patch_size)
        return math.ceil(grid / 2) ** 2

    @classmethod
    def load(cls, source: str, device: str = "cpu", inner: InnerMergeParams | None = InnerMergeParams()) -> LlavaReranker:
        """Load model and tokenizer from a Hugging Face model id or a local directory (``from_pretrained``),
        in bfloat16 on CUDA and float32 on CPU.

        Raises:
            LlmUnavailableError: anything that prevents loading (offline, missing files, wrong model).
        """
        try:
            from transformers import (
                AutoTokenizer,
                LlavaOnevisionForConditionalGeneration,
            )

            dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(source, dtype=dtype).to(dev)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:  # transformers raises OSError/ValueError/HF hub errors alike
            hint = " (weights cannot be downloaded here: point it at a local directory)" if not Path(source).exists() else ""
            raise LlmUnavailableError(f"cannot load the video LLM {source!r}: {exc}{hint}") from exc
        return cls(model, tokenizer, source, inner)

    def _single_token_ids(self, words: Sequence[str]) -> list[int]:
        ids = [self.tokenizer.encode(w, add_special_tokens=False) for w in words]
        return [i[0] for i in ids if len(i) == 1]

    # ----- ingestion: the outer-LLM step -----------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, images: np.ndarray | torch.Tensor, chunk: int = 4) -> VisualFeatures:
        """uint8 RGB frames ``[T, H, W, 3]`` -> pooled LLM-space tokens and tower attention (``[T, N, D]``,
        ``[T, N]``), the same tokens HF's ``get_video_features`` computes before appending the newline.
        Frames go through the tower ``chunk`` at a time (a SigLIP-400M attention map is 34 MB a frame)."""
        parts = [self._encode_chunk(images[i : i + chunk]) for i in range(0, len(images), chunk)]
        return VisualFeatures(tokens=torch.cat([p.tokens for p in parts]), attention=torch.cat([p.attention for p in parts]))

    def _encode_chunk(self, images: np.ndarray | torch.Tensor) -> VisualFeatures:
        inner_model = self.model.model
        tower = inner_model.vision_tower
        config = self.model.config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError("only a single vision_feature_layer is supported")
        index = feature_layer_index(config.vision_feature_layer, len(tower.encoder.layers))
        hidden = tower.embeddings(pixels_for_tower(images, self.image_size, self.device, self.dtype))
        for layer in tower.encoder.layers[: index - 1]:
            hidden = layer(hidden, None)
        last = tower.encoder.layers[index - 1]
        attention = received_attention(last.self_attn, last.layer_norm1, hidden)
        hidden = last(hidden, None)
        if config.vision_feature_select_strategy == "default":
            hidden, attention = hidden[:, 1:], attention[:, 1:]
        tokens = inner_model.apply_pooling(inner_model.multi_modal_projector(hidden))
        pooled_attention = inner_model.apply_pooling(attention[..., None].to(hidden.dtype))[..., 0]
        return VisualFeatures(tokens=tokens, attention=pooled_attention)

    def summarize(self, images: np.ndarray | torch.Tensor, times: Sequence[float], method: str = "holitom", **params: Any) -> VideoSummary:
        """Frames -> the stored LLM-space summary (:func:`llm_space_summary`)."""
        return llm_space_summary(self.encode_frames(images), times, method, **params)

    # ----- query time ------------------------------------------------------------------------------
    def visual_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Visual tokens ``[M, D]`` (a stored summary's, or all ``T * N`` uncompressed ones) -> the span fed to
        the LLM, ``[M + 1, D]``: the tokens then LLaVA-OV's single ``image_newline``."""
        newline = self.model.model.image_newline
        return torch.cat([tokens.to(device=self.device, dtype=self.dtype), newline[None].to(self.dtype)])

    def prompt_embeddings(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``([P, D], [S, D])`` of the prompt around the video for ``query``."""
        embed = self.model.get_input_embeddings()
        parts = []
        for text in prompt_texts(query):
            ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), device=self.device, dtype=torch.long)
            parts.append(embed(ids))
        return parts[0], parts[1]

    @torch.inference_mode()
    def score(self, query: str, visuals: Sequence[torch.Tensor], merge: bool = True) -> ScoreOutput:
        """P("yes") for each candidate's visual span (:meth:`visual_inputs`), as one left-padded batch.

        Args:
            query: the search text.
            visuals: ``B`` spans ``[M_i + 1, D]``.
            merge: apply the reranker's inner merge (``self.inner``); False runs plain prefill.
        """
        prefix, suffix = self.prompt_embeddings(query)
        batch = assemble(prefix, visuals, suffix)
        out = prefill(self.model.model.language_model, batch, self.inner if merge else None)
        logits = self.model.lm_head(out.last_hidden)
        return ScoreOutput(p_yes=yes_probability(logits, self.yes_ids, self.no_ids), prefill=out)


def llm_summary_key(source: str, method: str) -> str:
    """Catalog ``embedding_key`` of LLM-space summaries made by model ``source`` with ``method``."""
    return f"llava:{source}|{method}"


class LazyLlm:
    """Loads the video LLM once per process on first use, thread-safely; a failure is remembered (and
    reported) instead of retried on every request."""

    def __init__(self, load: Callable[[], LlavaReranker]):
        self._load = load
        self._lock = threading.Lock()
        self._model: LlavaReranker | None = None
        self._error: LlmUnavailableError | None = None

    @classmethod
    def of(cls, source: str, device: str, inner: InnerMergeParams | None) -> LazyLlm:
        """:meth:`LlavaReranker.load` of ``source`` on ``device`` with ``inner``, on first use."""
        return cls(lambda: LlavaReranker.load(source, device, inner))

    def get(self) -> LlavaReranker:
        """The model. Raises :class:`LlmUnavailableError` if it cannot be loaded."""
        with self._lock:
            if self._model is None and self._error is None:
                try:
                    self._model = self._load()
                except LlmUnavailableError as exc:
                    self._error = exc
                except ValueError as exc:  # loaded, but unusable (e.g. the merge layer is past its layers)
                    self._error = LlmUnavailableError(str(exc))
            if self._error is not None:
                raise self._error
            assert self._model is not None
            return self._model
