"""The causal CLIP text tower on ONNX Runtime: the query path's text forward without torch's
per-op overhead, optionally with int8 weights.

One search query is a ``[1, n]`` forward of a dozen tokens (the tower cut at EOT,
:mod:`models.text_tower`): a chain of small matrix-vector products whose cost is reading the
weights and dispatching ~200 ops, where torch eager spends much of its time. ONNX Runtime runs the
same graph with fused kernels; with ``quantize=True`` its dynamic quantisation stores the
matrices as int8 (a scale per output channel, activations quantised on the fly), a quarter of the bytes to
stream per token.

The graph does less than the tower's own forward, exactly: the start token's keys and values
(the same for every text: position 0 of a causal tower sees only itself) are computed once at
export, so a query of ``n`` tokens runs ``n - 1`` rows, and the last block's output projection
and MLP run on the pooled EOT row only (``_CutTextTower``): one row of a dozen and most of one
block of twelve less matrix work per query (``benchmarks/text_bench.py`` times the graphs with
and without these cuts side by side; docs/performance.md).

The exported graph restates the tower's forward in plain tensor ops (open_clip's blocks call
``nn.MultiheadAttention``, whose traced reshapes freeze the example's length), for exactly the
towers :func:`models.text_tower.causal_eot_tower` accepts and whose blocks are open_clip's
``ResidualAttentionBlock`` with a plain ``nn.MultiheadAttention`` (TempMe's text LoRA is folded
into ``in_proj`` at load, so it is covered). Everything else keeps the torch path. Each built tower is
checked against torch on probe texts before use (:func:`check_against_torch`).

Deviation, stated: the graph computes in float32 whatever dtype the torch weights were cast to
(``VIDSEEK_PRECISION``): bf16/fp16 weights are exported as their float32 values (computing in
float32 is closer to the checkpoint than torch's bf16 path, not further).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.precision import CpuCapability, detect_cpu_capability
from models.registry import AUTO
from models.text_tower import causal_eot_tower, encode_text_tokens
from models.weights import TextExportError

if TYPE_CHECKING:
    from models.backbone import ClipBackbone

log = logging.getLogger(__name__)

OPSET = 17
# Largest |ONNX - torch| allowed on unit-normalised probe embeddings: float32 reordering for fp32
# graphs (observed ~1e-6); int8 weights move embeddings much more, so they are held to a cosine.
FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.99
LOW_PRECISION_MIN_COSINE = 0.999  # float32 graph against torch weights cast to bf16/fp16 (issue 11's bar)

TORCH, ONNX, ONNX_INT8 = "torch", "onnx", "onnx-int8"
# In cached graphs' file names: a graph of an earlier version would still agree with torch (it
# computes the same features), so only the name keeps one from being reused. 2: start-token
# keys and values held in the graph, last block on the EOT row only.
GRAPH_VERSION = 2
AUTO_CPU_RUNTIME = ONNX


def _heads(mha: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of batch-first ``x`` ``[B, n, d]``, each ``[B, heads, n, d / heads]``,
    written with shapes read off ``x`` so that the export keeps batch and length dynamic."""
    b, n, d = x.shape
    heads = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _mix(mha: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         mask: torch.Tensor) -> torch.Tensor:
    """``mha``'s scaled dot-product attention of queries ``[B, heads, m, h]`` over keys and values
    ``[B, heads, n, h]`` with an additive ``mask`` broadcastable to ``[B, heads, m, n]``; returns the
    heads concatenated, ``[B, m, heads * h]``, before ``out_proj``."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * mha.head_dim ** -0.5 + mask, dim=-1)
    mixed = weights @ v
    return mixed.transpose(1, 2).reshape(mixed.shape[0], mixed.shape[2], -1)


def _residual(block: nn.Module, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """The rest of open_clip's ``ResidualAttentionBlock`` after attention: ``x`` ``[B, m, d]`` plus
    the projected attention output ``mixed`` ``[B, m, d]`` (from :func:`_mix`), then its MLP."""
    x = x + block.ls_1(block.attn.out_proj(mixed))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class _CutTextTower(nn.Module):
    """A float32 copy of a text tower's parts (not the vision tower a ``CLIP`` also holds):
    token ids ``[B, n]``, already cut after the batch's last EOT and each starting with
    ``first_token`` -> text features ``[B, E]``, as :func:`models.text_tower.encode_text_tokens`
    (not normalised).

    Two exact cuts on top of the EOT cut, both from the tower being causal and EOT-pooled:

    - Every text starts with the same token (the tokenizer's start-of-text), and a causal
      position 0 attends only to itself, so its keys and values in every block are the same for
      every text: they are computed once here (``prefix_keys``/``prefix_values``
      ``[layers, 1, heads, 1, d / heads]``) and the graph runs positions ``1..n-1`` only.
    - The output is the EOT row of the last block, so that block's attention output projection
      and MLP run on that row alone (keys and values still come from every position).

    Each is the same arithmetic as the full forward for the rows kept, so a float32 graph
    equals torch up to float reordering (:data:`FP32_TOLERANCE`). With int8 matrices the
    activations are quantised per tensor over the rows a graph computes, so dropping the
    start token's row changes their scale slightly (held to :data:`INT8_MIN_COSINE` like before).
    ``row_cuts=False`` runs every row through every block instead: the graph before these cuts,
    kept as ``benchmarks/text_bench.py``'s baseline.
    """

    def __init__(self, tower: nn.Module, first_token: int, row_cuts: bool = True):
        super().__init__()
        self.row_cuts = row_cuts
        self.token_embedding = copy.deepcopy(tower.token_embedding).float()
        self.transformer = copy.deepcopy(tower.transformer).float()
        self.ln_final = copy.deepcopy(tower.ln_final).float()
        projection = tower.text_projection
        self.text_projection = copy.deepcopy(projection).float() if projection is not None else None
        self.register_buffer("positional_embedding", tower.positional_embedding.detach().float().clone())
        self.register_buffer("attn_mask", tower.attn_mask.detach().float().clone())
        keys, values = self._first_position(first_token)
        self.register_buffer("prefix_keys", keys)
        self.register_buffer("prefix_values", values)

    @torch.no_grad()
    def _first_position(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of position 0 holding ``token``, per block: two ``[layers, 1, heads, 1, h]``."""
        x = self.token_embedding(torch.tensor([[token]])) + self.positional_embedding[:1]
        keys, values = [], []
        for block in self.transformer.resblocks:
            q, k, v = _heads(block.attn, block.ln_1(x))
            keys.append(k)
            values.append(v)
            x = _residual(block, x, _mix(block.attn, q, k, v, self.attn_mask[:1, :1]))
        return torch.stack(keys), torch.stack(values)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n = tokens.shape
        rows = torch.arange(b)
        start = 1 if self.row_cuts else 0  # the first position computed
        eot = tokens.argmax(dim=-1) - start  # argmax pooling: the EOT token has the highest id
        x = self.token_embedding(tokens[:, start:]) + self.positional_embedding[start:n]  # [B, n - start, d]
        mask = self.attn_mask[start:n, :n]  # queries start..n-1 over keys 0..n-1
        last = len(self.transformer.resblocks) - 1
        for i, block in enumerate(self.transformer.resblocks):
            q, k, v = _heads(block.attn, block.ln_1(x))
            if self.row_cuts:
                k = torch.cat([self.prefix_keys[i].expand(b, -1, -1, -1), k], dim=2)
                v = torch.cat([self.prefix_values[i].expand(b, -1, -1, -1), v], dim=2)
            mixed = _mix(block.attn, q, k, v, mask)
            if i == last and self.row_cuts:  # only the EOT row is pooled
                mixed, x = mixed[rows, eot].unsqueeze(1), x[rows, eot].unsqueeze(1)
                eot = torch.zeros_like(eot)
            x = _residual(block, x, mixed)
        x = self.ln_final(x[rows, eot])
        projection = self.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def exportable_tower(model: nn.Module) -> nn.Module | None:
    """``model``'s text tower when the restated forward covers it exactly, else None: a causal EOT
    tower (:func:`causal_eot_tower`) of batch-first open_clip ``ResidualAttentionBlock`` s with a
    plain ``nn.MultiheadAttention`` and no cross-attention norm."""
    from open_clip.transformer import ResidualAttentionBlock

    tower = causal_eot_tower(model)
    if tower is None:
        return None
    for block in tower.transformer.resblocks:
        if type(block) is not ResidualAttentionBlock or type(block.attn) is not nn.MultiheadAttention:
            return None
        if not block.attn.batch_first or not block.attn._qkv_same_embed_dim or hasattr(block, "ln_1_kv"):
            return None
    return tower


def leading_token(tokenizer) -> int:
    """The token every text starts with under ``tokenizer`` (open_clip's start-of-text), read off
    the tokens of :data:`PROBE_TEXTS` and the empty text.

    Raises:
        TextExportError: those texts do not all start with one token.
    """
    firsts = {int(t) for t in tokenizer([*PROBE_TEXTS, ""])[:, 0]}
    if len(firsts) != 1:
        raise TextExportError(f"texts do not all start with one token (first tokens {sorted(firsts)})")
    return firsts.pop()


def export_text_tower(model: nn.Module, first_token: int, row_cuts: bool = True) -> bytes:
    """ONNX (opset :data:`OPSET`) of ``model``'s text tower cut at EOT, float32, dynamic batch and
    length: input ``tokens`` int64 ``[B, n]``, every row starting with ``first_token``
    (:func:`leading_token`, whose keys and values the graph holds; see ``_CutTextTower``),
    output ``features`` float32 ``[B, E]``. ``row_cuts=False``: the graph without the start-token
    and EOT-row cuts (a benchmark's baseline).

    Raises:
        TextExportError: the tower is not one :func:`exportable_tower` accepts.
    """
    tower = exportable_tower(model)
    if tower is None:
        raise TextExportError("the text tower is not a plain causal EOT-pooled open_clip tower")
    cut = _CutTextTower(tower, first_token, row_cuts).eval()
    example = torch.tensor([[first_token, 2, 3, 4]], dtype=torch.long)
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (torch is pinned; the torch.export-based one needs onnxscript)
        # announces its deprecation, and that gathers with negative indices would be wrong: the
        # EOT gather's indices are argmax positions, never negative.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            cut, (example,), buffer, input_names=["tokens"], output_names=["features"],
            dynamic_axes={"tokens": {0: "batch", 1: "length"}, "features": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    return buffer.getvalue()


def quantize_int8(onnx_model: bytes, reduce_range: bool) -> bytes:
    """``onnx_model`` with its matrices stored as int8 (ONNX Runtime's dynamic quantisation:
    one scale per output channel of each matrix, activations quantised at run time as uint8).

    ``reduce_range`` stores the weights in 7 bits (-64..63). CPUs without VNNI multiply uint8
    activations by int8 weights with ``vpmaddubsw``, which adds two products into an int16 that
    saturates when both are large; 7-bit weights keep the sum in range. ``benchmarks/int8_range.py``
    on an AVX2-only AMD EPYC (no VNNI), min cosine to torch over 64 queries: the test's tiny tower
    0.98385 with 8-bit weights, 0.99608 with 7-bit; ViT-B/32 0.99764 and 0.99786, at the same speed.
    With VNNI the products are summed in int32 and full 8-bit weights are kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "fp32.onnx"), Path(folder, "int8.onnx")
        source.write_bytes(onnx_model)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
        return target.read_bytes()


def int8_reduce_range(cpu: CpuCapability) -> bool:
    """Whether int8 weights should use 7 bits on ``cpu`` (:func:`quantize_int8`): when it lacks VNNI."""
    return not cpu.vnni


@dataclass(frozen=True)
class OnnxTextTower:
    """An ONNX Runtime session of an exported text tower (see :func:`export_text_tower`).

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        quantized: whether the matrices are int8.
        first_token: the token every text starts with, whose keys and values the graph holds.
    """

    session: object
    quantized: bool
    first_token: int

    @property
    def label(self) -> str:
        return "onnx-int8" if self.quantized else "onnx"

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[Q, C]`` (padded to the context) -> ``[Q, E]`` float32 features, not
        normalised; the graph runs over positions ``1..max EOT`` only.

        Raises:
            ValueError: a row does not start with :attr:`first_token` or has no later EOT.
        """
        eot = tokens.argmax(dim=-1)
        if bool((tokens[:, 0] != self.first_token).any()) or int(eot.min()) < 1:
            raise ValueError(f"the ONNX text tower takes texts starting with token {self.first_token} and ending with EOT")
        n = int(eot.max()) + 1
        ids = np.ascontiguousarray(tokens[:, :n].cpu().numpy().astype(np.int64))
        (features,) = self.session.run(["features"], {"tokens": ids})
        return torch.from_numpy(features)


def open_session(onnx_model: bytes, quantized: bool, first_token: int, threads: int | None = None) -> OnnxTextTower:
    """An ONNX Runtime CPU session over ``onnx_model`` (exported for ``first_token``) with ``threads``
    intra-op threads (default: torch's current count, 1 in an API process), no spinning idle
    threads, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    return OnnxTextTower(session, quantized, first_token)


PROBE_TEXTS = (
    "a dog catches a frisbee on the beach",
    "x",
    "two people talking in a kitchen at night while it rains outside and a cat sleeps on the windowsill " * 4,
)


def check_against_torch(model: nn.Module, tokenizer, tower: OnnxTextTower) -> float:
    """Compare ``tower`` with ``model``'s torch text tower on :data:`PROBE_TEXTS` (one batch of
    mixed lengths, one of them past the context); returns the smallest cosine between their
    normalised embeddings.

    Raises:
        TextExportError: against a float32 torch tower, a float32 graph differs by more than
            :data:`FP32_TOLERANCE`; otherwise (int8 graph, or torch weights cast to bf16/fp16) the
            cosine is below :data:`INT8_MIN_COSINE` / :data:`LOW_PRECISION_MIN_COSINE`.
    """
    tokens = tokenizer(list(PROBE_TEXTS))
    device = next(model.parameters()).device
    with torch.inference_mode():
        reference = F.normalize(encode_text_tokens(model, tokens.to(device)).float().cpu(), dim=-1)
    got = F.normalize(tower(tokens), dim=-1)
    cosine = float((got * reference).sum(-1).min())
    torch_fp32 = exportable_tower(model).transformer.get_cast_dtype() == torch.float32
    if not tower.quantized and torch_fp32:
        if (diff := float((got - reference).abs().max())) > FP32_TOLERANCE:
            raise TextExportError(f"ONNX text tower differs from torch by {diff:.2e} > {FP32_TOLERANCE:.0e}")
        return cosine
    floor = INT8_MIN_COSINE if tower.quantized else LOW_PRECISION_MIN_COSINE
    if cosine < floor:
        raise TextExportError(f"{tower.label} text tower disagrees with torch: min cosine {cosine:.4f} < {floor}")
    return cosine


def build_onnx_text_tower(model: nn.Module, tokenizer, quantize: bool, cache_file: Path | None = None,
                          threads: int | None = None, reduce_range: bool | None = None) -> OnnxTextTower:
    """The ONNX Runtime text tower of ``model`` (int8 matrices when ``quantize``, in 7 bits when
    ``reduce_range``, default :func:`int8_reduce_range` of this CPU), checked against torch.
    ``cache_file``, when given, holds the exported graph between process starts: read when present
    (and re-exported if it fails the check), written atomically otherwise.

    Raises:
        TextExportError: the tower cannot be exported, or the export disagrees with torch.
        ImportError: onnxruntime is not installed (the ``onnx`` extra).
    """
    import onnxruntime  # noqa: F401 -- fail before exporting when the runtime is missing

    first_token = leading_token(tokenizer)
    if cache_file is not None and cache_file.is_file():
        tower = open_session(cache_file.read_bytes(), quantize, first_token, threads)
        try:
            check_against_torch(model, tokenizer, tower)
            return tower
        except TextExportError as exc:
            log.warning("cached text tower %s is stale (%s); exporting again", cache_file, exc)
    graph = export_text_tower(model, first_token)
    if quantize:
        graph = quantize_int8(graph, int8_reduce_range(detect_cpu_capability()) if reduce_range is None else reduce_range)
    tower = open_session(graph, quantize, first_token, threads)
    cosine = check_against_torch(model, tokenizer, tower)
    log.info("text tower runs on ONNX Runtime (%s), min cosine to torch %.6f", tower.label, cosine)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.part")
        partial.write_bytes(graph)
        partial.replace(cache_file)
    return tower


@dataclass(frozen=True)
class TextRuntimeChoice:
    """Where query texts are encoded (``torch``, ``onnx`` or ``onnx-int8``) and why."""

    runtime: str
    reason: str


def choose_text_runtime(requested: str, device: torch.device) -> TextRuntimeChoice:
    """``VIDSEEK_TEXT_RUNTIME`` resolved: ``auto`` is :data:`AUTO_CPU_RUNTIME` on a CPU with
    onnxruntime installed (the ``onnx`` extra), else torch (a GPU runs the torch tower at its
    precision; ONNX Runtime here is a CPU path)."""
    if requested != AUTO:
        return TextRuntimeChoice(requested, "set by VIDSEEK_TEXT_RUNTIME")
    if device.type != "cpu":
        return TextRuntimeChoice(TORCH, f"auto: the text tower runs on {device.type} with the model")
    if importlib.util.find_spec("onnxruntime") is None:
        return TextRuntimeChoice(TORCH, "auto: onnxruntime is not installed (pip install 'vidseek[onnx]')")
    return TextRuntimeChoice(AUTO_CPU_RUNTIME, "auto: CPU with onnxruntime (exact float32 graph)")


def attach_text_runtime(backbone: "ClipBackbone", requested: str, cache_dir: Path | None = None) -> TextRuntimeChoice:
    """Make ``backbone`` encode texts where ``requested`` (``VIDSEEK_TEXT_RUNTIME``) says, and return
    the choice. The exported graph is cached in ``cache_dir`` under a name derived from the
    backbone's key. Under ``auto`` a tower that cannot run on ONNX Runtime keeps torch (logged);
    asked for explicitly, it is an error.

    Raises:
        TextExportError: ``onnx``/``onnx-int8`` was asked for and the tower cannot run there
            (not exportable, disagrees with torch, or onnxruntime is missing).
    """
    choice = choose_text_runtime(requested, backbone.device)
    if choice.runtime == TORCH:
        log.info("query texts are encoded with torch (%s)", choice.reason)
        return choice
    quantize = choice.runtime == ONNX_INT8
    reduce_range = quantize and int8_reduce_range(detect_cpu_capability())
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(backbone.key.encode()).hexdigest()[:16]
        cache_file = cache_dir / f"text-{digest}-g{GRAPH_VERSION}-{choice.runtime}{'-7bit' if reduce_range else ''}.onnx"
    try:
        tower = build_onnx_text_tower(backbone.model, backbone.tokenizer, quantize, cache_file, reduce_range=reduce_range)
    except (TextExportError, ImportError) as exc:
        if requested != AUTO:
            raise TextExportError(f"VIDSEEK_TEXT_RUNTIME={requested}: {exc}") from exc
        log.warning("the text tower stays on torch: %s", exc)
        return TextRuntimeChoice(TORCH, f"auto: {exc}")
    backbone.use_text_tower(tower, choice.runtime)
    return choice
