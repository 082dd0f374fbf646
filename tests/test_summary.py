"""VideoSummary: summarize() for both methods, byte round trip, chunk concatenation, backbone integration."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from models.encoders import FullClipEncoder
from models.summary import VideoSummary, concat, summarize


def video(
    frames: int = 12, positions: int = 49, dim: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A static background (positions 10..48) with changing content at positions 0..9."""
    generator = torch.Generator().manual_seed(seed)
    background = torch.randn(1, positions, dim, generator=generator)
    tokens = background + 0.05 * torch.randn(frames, positions, dim, generator=generator)
    tokens[:, :10] = torch.randn(frames, 10, dim, generator=generator)
    attention = torch.rand(frames, positions, generator=generator).softmax(dim=-1)
    times = torch.arange(frames, dtype=torch.float64) * 0.5
    return tokens, attention, times


def assert_same(a: VideoSummary, b: VideoSummary) -> None:
    assert torch.equal(a.tokens, b.tokens)
    for name in ("sizes", "frame_start", "frame_end", "positions", "frame_times"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.method, a.params, a.num_patches) == (b.method, b.params, b.num_patches)
    assert (a.index_map is None and b.index_map is None) or torch.equal(a.index_map, b.index_map)


def test_summarize_holitom() -> None:
    tokens, attention, times = video()
    s = summarize("holitom", tokens, attention, times, retain_ratio=0.3, tau=0.8)
    assert s.method == "holitom" and s.index_map is None
    assert s.params["retain_ratio"] == 0.3 and s.params["beta"] == 0.6  # resolved defaults are recorded
    assert s.num_frames == 12 and s.num_patches == 49
    assert s.tokens.shape == (s.num_tokens, 32) and s.tokens.dtype == torch.float32
    # 0.3 x 588 tokens is more than the 159 left after temporal merging: nothing is dropped
    assert int(s.sizes.sum()) == 12 * 49
    assert (s.positions >= 0).all() and (s.frame_end >= s.frame_start).all()


def test_summarize_vqtoken() -> None:
    tokens, _, times = video()
    s = summarize("vqtoken", tokens, None, times, num_codes=16)
    assert s.method == "vqtoken" and s.index_map.shape == (12, 49)
    assert s.num_tokens == int(s.index_map.max()) + 1 <= 16
    assert int(s.sizes.sum()) == 12 * 49
    assert (s.positions == -1).all()
    # every code's frame range is where it occurs in the index map
    for code in range(s.num_tokens):
        frames = (s.index_map == code).any(dim=1).nonzero().flatten()
        assert (s.frame_start[code], s.frame_end[code]) == (frames.min(), frames.max())


def test_summarize_rejects_bad_input() -> None:
    tokens, attention, times = video()
    with pytest.raises(ValueError, match="unknown summary method"):
        summarize("tome", tokens, attention, times)
    with pytest.raises(TypeError):
        summarize("holitom", tokens, attention, times, retain=0.1)
    with pytest.raises(ValueError, match="cls_attention"):
        summarize("holitom", tokens, None, times)
    with pytest.raises(ValueError, match="frame_times"):
        summarize("vqtoken", tokens, None, times[:5])


@pytest.mark.parametrize("method", ["holitom", "vqtoken"])
def test_bytes_round_trip(method: str) -> None:
    tokens, attention, times = video()
    s = summarize(method, tokens, attention, times)
    data = s.to_bytes()
    back = VideoSummary.from_bytes(data)
    torch.testing.assert_close(back.tokens, s.tokens, rtol=1e-3, atol=1e-3)  # stored as fp16
    assert torch.equal(back.tokens, s.tokens.half().float())
    for name in ("sizes", "frame_start", "frame_end", "positions", "frame_times"):
        assert torch.equal(getattr(back, name), getattr(s, name)), name
    assert (back.method, back.params, back.num_patches) == (s.method, s.params, s.num_patches)
    assert (s.index_map is None) == (back.index_map is None)
    if s.index_map is not None:
        assert torch.equal(back.index_map, s.index_map)
    assert_same(VideoSummary.from_bytes(back.to_bytes()), back)
    assert len(data) * 4 < tokens.numel() * tokens.element_size()  # under a quarter of the raw grid


def test_from_bytes_rejects_other_formats() -> None:
    tokens, attention, times = video()
    s = summarize("holitom", tokens, attention, times)
    with np.load(io.BytesIO(s.to_bytes())) as npz:
        arrays = dict(npz)
    header = json.loads(arrays["header"].tobytes())
    arrays["header"] = np.frombuffer(json.dumps({**header, "format": 99}).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="format"):
        VideoSummary.from_bytes(buffer.getvalue())


@pytest.mark.parametrize("method", ["holitom", "vqtoken"])
def test_concat_shifts_frames_and_index_map(method: str) -> None:
    tokens, attention, times = video(frames=12)
    params = {"num_codes": 12} if method == "vqtoken" else {}
    first = summarize(method, tokens[:5], attention[:5], times[:5], **params)
    second = summarize(method, tokens[5:], attention[5:], times[5:], **params)
    joined = concat([first, second])
    assert joined.num_frames == 12 and joined.num_tokens == first.num_tokens + second.num_tokens
    assert torch.equal(joined.frame_times, times)
    assert torch.equal(joined.frame_start[: first.num_tokens], first.frame_start)
    assert torch.equal(joined.frame_end[: first.num_tokens], first.frame_end)
    assert torch.equal(joined.frame_start[first.num_tokens :], second.frame_start + 5)
    assert torch.equal(joined.frame_end[first.num_tokens :], second.frame_end + 5)
    assert int(joined.sizes.sum()) == int(first.sizes.sum() + second.sizes.sum())
    if method == "vqtoken":
        # every patch token still points at the same code vector after the join
        torch.testing.assert_close(joined.tokens[joined.index_map[:5]], first.tokens[first.index_map])
        torch.testing.assert_close(joined.tokens[joined.index_map[5:]], second.tokens[second.index_map])
    assert_same(concat([joined]), joined)


def test_concat_validates_parts() -> None:
    tokens, attention, times = video()
    a = summarize("holitom", tokens[:6], attention[:6], times[:6])
    b = summarize("holitom", tokens[6:], attention[6:], times[6:], retain_ratio=0.2)
    v = summarize("vqtoken", tokens[6:], None, times[6:], num_codes=4)
    with pytest.raises(ValueError, match="share"):
        concat([a, b])
    with pytest.raises(ValueError, match="share"):
        concat([a, v])
    c = summarize("holitom", tokens[6:], attention[6:], times[6:])
    with pytest.raises(ValueError, match="time order"):
        concat([c, a])
    with pytest.raises(ValueError):
        concat([])


def test_summaries_from_the_tiny_backbone_project_into_clip_space(tiny_backbone) -> None:
    frames = 6
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 1, 3, 224, 224, generator=generator).expand(1, frames, 3, 224, 224).clone()
    pixels[:, 3:, :, :64, :64] = torch.rand(3, 3, 64, 64, generator=generator)  # a patch changes half-way
    encoding = FullClipEncoder(tiny_backbone).encode(pixels, with_tokens=True)
    times = torch.arange(frames, dtype=torch.float64)
    for method in ("holitom", "vqtoken"):
        s = summarize(method, encoding.patch_tokens[0], encoding.cls_attention[0], times)
        assert s.num_patches == tiny_backbone.num_patches == 49
        projected = tiny_backbone.project(s.tokens)
        assert projected.shape == (s.num_tokens, tiny_backbone.embed_dim)
        assert torch.isfinite(projected).all()
    holi = summarize("holitom", encoding.patch_tokens[0], encoding.cls_attention[0], times, retain_ratio=1.0)
    # frames 0-2 are identical, so some tokens are static and span several frames
    assert int(holi.sizes.sum()) == frames * 49
    assert (holi.frame_end > holi.frame_start).any()
