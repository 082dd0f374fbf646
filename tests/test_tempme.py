"""TempMe encoder (models/tempme.py) on the tiny 12-block, 50-tokens-per-frame ViT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone
from models.encoders import FullClipEncoder, build_encoder
from models.factory import embedding_space_key, load_tempme_weights, space_key, tempme_encoder
from models.tempme import TempMeConfig, TempMeEncoder, _clip_positions, join_clips, join_sources, plan_layers
from models.vit_blocks import qkv

NO_MERGING = TempMeConfig(image_r=0, clip_sizes=(1, 1, 1), cross_clip_ratio=0.0, intra_clip_ratio=0.0)

# Tokens per clip (joined, during attention, after the block) for 12 frames of 50 tokens:
# ImgMe r=2 in blocks 0-7, then ClipMe 2, 2, 3 frames and the 10% merge of block 11.
OFFICIAL_12 = [(50 - 2 * i, 50 - 2 * i, 48 - 2 * i) for i in range(8)] + [
    (68, 48, 44),
    (88, 62, 56),
    (168, 118, 107),
    (107, 107, 97),
]


def _pixels(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def fresh_backbone(tiny_backbone) -> ClipBackbone:
    """The shared tiny backbone; after the test, its weights and key must be as before (building
    an encoder with trained weights works on a copy)."""
    before = {name: t.clone() for name, t in tiny_backbone.model.state_dict().items()}
    key = tiny_backbone.key
    yield tiny_backbone
    assert tiny_backbone.key == key
    for name, t in tiny_backbone.model.state_dict().items():
        assert torch.equal(t, before[name]), name


# ----- schedule --------------------------------------------------------------------------------
def test_plan_is_the_official_schedule_for_12_frames():
    plans = plan_layers(TempMeConfig(), frames=12, tokens_per_frame=50, depth=12)
    assert [p.tokens for p in plans] == OFFICIAL_12
    assert [p.clip_size for p in plans[8:11]] == [2, 2, 3]
    assert [p.clips for p in plans[7:]] == [12, 6, 3, 1, 1]


@pytest.mark.parametrize(
    ("frames", "sizes"),
    [(12, [2, 2, 3]), (6, [2, 1, 3]), (8, [2, 2, 2]), (1, [1, 1, 1]), (5, [1, 1, 1]), (13, [1, 1, 1])],
)
def test_clip_sizes_divide_the_clips(frames: int, sizes: list[int]):
    plans = plan_layers(TempMeConfig(), frames=frames, tokens_per_frame=50, depth=12)
    assert [p.clip_size for p in plans[8:11]] == sizes


def test_measured_token_schedule_on_tiny_model(tiny_backbone):
    encoder = TempMeEncoder(tiny_backbone)
    out = encoder.encode_tokens(_pixels(2, 12))
    assert list(out.tokens_per_layer) == OFFICIAL_12
    assert out.hidden.shape == (2, 97, tiny_backbone.width)
    assert encoder.encode(_pixels(2, 12)).tokens_per_segment == 97


# ----- encoder outputs -------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 5, 7, 12, 13])
def test_any_segment_length(tiny_backbone, frames: int):
    encoder = TempMeEncoder(tiny_backbone)
    pixels = _pixels(2, frames)
    enc = encoder.encode(pixels, with_tokens=True)
    n, w, e = tiny_backbone.num_patches, tiny_backbone.width, tiny_backbone.embed_dim
    assert enc.embeddings.shape == (2, e)
    assert enc.frame_embeddings.shape == (2, frames, e)
    assert enc.patch_tokens.shape == (2, frames, n, w)
    assert enc.cls_attention.shape == (2, frames, n)
    torch.testing.assert_close(enc.embeddings.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(enc.frame_embeddings.norm(dim=-1), torch.ones(2, frames))
    assert torch.isfinite(enc.patch_tokens).all() and torch.isfinite(enc.cls_attention).all()
    plans = encoder.plan(frames)
    assert enc.tokens_per_segment == plans[-1].clips * plans[-1].tokens[2]
    out = encoder.encode_tokens(pixels)
    assert torch.all(out.size.view(2, -1).sum(dim=1) == frames * 50)


def test_cls_tokens_are_never_merged(tiny_backbone):
    out = TempMeEncoder(tiny_backbone).encode_tokens(_pixels(2, 12), with_tokens=True)
    # One clip of 12 frames per segment; its first 12 tokens are the frames' CLS tokens.
    cls_rows = out.source[:, :12]  # [2, 12, 12 * 50]
    expected = F.one_hot(torch.arange(12) * 50, 12 * 50).float().expand(2, -1, -1)
    assert torch.equal(cls_rows, expected)
    assert torch.all(out.size[:, :12] == 1)
    assert torch.all(out.source.sum(dim=1) == 1)  # every original token held exactly once


def test_batching_does_not_mix_segments_and_is_deterministic(tiny_backbone):
    encoder = TempMeEncoder(tiny_backbone)
    pixels = _pixels(3, 12, seed=4)
    together = encoder.encode(pixels, with_tokens=True)
    again = encoder.encode(pixels, with_tokens=True)
    assert torch.equal(together.embeddings, again.embeddings)
    assert torch.equal(together.patch_tokens, again.patch_tokens)
    alone = encoder.encode(pixels[1:2], with_tokens=True)
    torch.testing.assert_close(together.embeddings[1:2], alone.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.cls_attention[1:2], alone.cls_attention, atol=1e-6, rtol=1e-4)


def test_no_merging_equals_full_clip(tiny_backbone):
    pixels = _pixels(2, 5, seed=1)
    tempme = TempMeEncoder(tiny_backbone, NO_MERGING).encode(pixels, with_tokens=True)
    full = FullClipEncoder(tiny_backbone).encode(pixels, with_tokens=True)
    for field in ("embeddings", "frame_embeddings", "patch_tokens", "cls_attention"):
        torch.testing.assert_close(getattr(tempme, field), getattr(full, field), atol=1e-5, rtol=1e-4)
    assert tempme.tokens_per_segment == full.tokens_per_segment == 5 * 50


def test_tokens_are_mapped_back_through_sources(tiny_backbone):
    encoder = TempMeEncoder(tiny_backbone)
    pixels = _pixels(2, 12, seed=2)
    out = encoder.encode_tokens(pixels, with_tokens=True)
    enc = encoder.encode(pixels, with_tokens=True)
    n0 = 1 + tiny_backbone.num_patches
    # Each original token takes its holder's value: source^T @ hidden, patch positions only.
    spread = (out.source.transpose(1, 2) @ out.hidden).view(2, 12, n0, -1)[:, :, 1:]
    torch.testing.assert_close(enc.patch_tokens, spread)
    # Each frame's CLS attention spread evenly over the members of the attended tokens.
    per_member = (out.cls_attention / out.last_size.transpose(1, 2)) @ out.last_source  # [2, 12, 12 * n0]
    own = per_member.view(2, 12, 12, n0).diagonal(dim1=1, dim2=2).permute(0, 2, 1)[:, :, 1:]
    torch.testing.assert_close(enc.cls_attention, own)
    assert torch.all(enc.cls_attention.sum(dim=-1) <= 1 + 1e-6)


def test_each_merge_uses_tempmes_metric_count_and_protection(tmp_path, fresh_backbone, monkeypatch):
    """Cross-clip merges match on the block input (without the video positions, which are
    nonzero here), intra-clip merges on the attention keys; CLS tokens are protected and
    attention gets the token sizes (proportional attention)."""
    import models.tempme as tempme

    events: list[tuple] = []
    real_match, real_attention, real_mlp = tempme.bipartite_soft_matching, tempme.run_attention, tempme.run_mlp

    def match(metric, r, protected=0):
        events.append(("match", metric, r, protected))
        return real_match(metric, r, protected)

    def attention(block, x, size=None, return_attention=False):
        out = real_attention(block, x, size=size, return_attention=return_attention)
        events.append(("attention", out.metric, size))
        return out

    def mlp(block, x):
        out = real_mlp(block, x)
        events.append(("out", out))
        return out

    monkeypatch.setattr(tempme, "bipartite_soft_matching", match)
    monkeypatch.setattr(tempme, "run_attention", attention)
    monkeypatch.setattr(tempme, "run_mlp", mlp)
    checkpoint = _checkpoint(fresh_backbone, tmp_path / "pos.pth", 0.0, position=1.0)
    tempme_encoder(fresh_backbone, checkpoint).encode_tokens(_pixels(2, 12))

    matches = [(event[2], event[3]) for event in events if event[0] == "match"]
    assert matches == [(2, 1)] * 8 + [(20, 2), (4, 2), (26, 4), (6, 4), (50, 12), (11, 12), (10, 12)]
    previous_out = None
    clip_sizes = {8: 2, 9: 2, 10: 3}
    layer, cls = 0, 1
    for i, event in enumerate(events):
        if event[0] == "out":
            previous_out, layer = event[1], layer + 1
        elif event[0] == "attention":
            size = event[2]
            assert (size is None) == (layer == 0)
            if size is not None:
                assert torch.all(size.view(2, -1).sum(dim=1) == 12 * 50)
        elif events[i - 1][0] == "attention":  # intra-clip merge: on the keys of that attention
            assert events[i][1] is events[i - 1][1]
        else:  # cross-clip merge at a ClipMe block: on the joined block input
            k = clip_sizes[layer]
            assert torch.equal(event[1], join_clips(previous_out, k, cls))
            cls *= k
    assert cls == 12


def test_join_clips_puts_cls_tokens_first():
    x = torch.arange(2 * 2 * 4).view(4, 4, 1)  # 4 clips of [cls, p, p, p] with cls=1
    joined = join_clips(x, k=2, cls=1)
    assert joined[0, :, 0].tolist() == [0, 4, 1, 2, 3, 5, 6, 7]
    source = torch.eye(4).expand(4, 4, 4)
    assert torch.equal(join_sources(source, k=2, cls=1)[0], torch.eye(8)[[0, 4, 1, 2, 3, 5, 6, 7]])


def test_build_encoder_returns_tempme(tiny_backbone):
    encoder = build_encoder("tempme", tiny_backbone)
    assert isinstance(encoder, TempMeEncoder) and encoder.name == "tempme"


# ----- trained weights -------------------------------------------------------------------------
def _checkpoint(backbone: ClipBackbone, path: Path, lora_b: float, position: float, rank: int = 8) -> Path:
    """A checkpoint with the official key names (VTRModel.state_dict()) for ``backbone``."""
    gen = torch.Generator().manual_seed(7)
    w = backbone.width
    state = {"clip.visual.conv1.weight": torch.zeros(1), "clip.logit_scale": torch.zeros(())}
    towers = {"clip.visual.transformer": backbone.visual.transformer, "clip.transformer": backbone.model.transformer}
    for prefix, tower in towers.items():
        width = tower.resblocks[0].attn.embed_dim
        for i in range(len(tower.resblocks)):
            state[f"{prefix}.resblocks.{i}.attn.TVPt_LoRA_a"] = torch.randn(rank, width, generator=gen) * 0.1
            state[f"{prefix}.resblocks.{i}.attn.TVPt_LoRA_b"] = torch.randn(3 * width, rank, generator=gen) * lora_b
    for layer, frames in zip((8, 9, 10), (12, 6, 3)):
        state[f"clip.visual.transformer.resblocks.{layer}.TVPt_Video_Positional_embedding"] = (
            torch.randn(1, frames, 1, w, generator=gen) * position
        )
    torch.save(state, path)
    return path


def test_zero_trained_weights_equal_training_free(tmp_path, fresh_backbone):
    backbone = fresh_backbone
    pixels = _pixels(2, 12, seed=3)
    free = TempMeEncoder(backbone).encode(pixels)
    text = backbone.encode_text(["a dog"])
    path = _checkpoint(backbone, tmp_path / "zero.pth", 0.0, 0.0)
    trained = tempme_encoder(backbone, path)
    torch.testing.assert_close(trained.encode(pixels).embeddings, free.embeddings)
    torch.testing.assert_close(trained.backbone.encode_text(["a dog"]), text)
    assert trained.backbone is not backbone and trained.backbone.key.startswith(backbone.key + "+tempme-")
    # One function names the space, from the settings alone or from the built encoder.
    assert space_key(trained.backbone.key, trained.name) == embedding_space_key(
        backbone.name, "random", "tempme", path
    )
    assert embedding_space_key(backbone.name, "random", "full", path) == space_key(backbone.key, "full")


def test_trained_lora_is_folded_into_both_towers(tmp_path, fresh_backbone):
    backbone = fresh_backbone
    pixels = _pixels(2, 12, seed=3)
    free = TempMeEncoder(backbone).encode(pixels)
    text = backbone.encode_text(["a dog"])
    block = backbone.visual.transformer.resblocks[3]
    x = torch.randn(2, 7, backbone.width)
    path = _checkpoint(backbone, tmp_path / "lora.pth", lora_b=0.05, position=0.0)
    weights = load_tempme_weights(path)
    trained = tempme_encoder(backbone, path)
    folded_block = trained.backbone.visual.transformer.resblocks[3]
    # The official unfolded form: in_proj(ln_1(x)) + ln_1(x) @ A.T @ B.T, no alpha scaling.
    a, b = weights.visual_lora[3]
    delta = (block.ln_1(x) @ a.T @ b.T).view(2, 7, 3, block.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    for folded, plain, d in zip(qkv(folded_block, x), qkv(block, x), delta):
        torch.testing.assert_close(folded, plain + d, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(trained.encode(pixels).embeddings, free.embeddings, atol=1e-3)
    assert not torch.allclose(trained.backbone.encode_text(["a dog"]), text, atol=1e-3)
    other = _checkpoint(backbone, tmp_path / "other.pth", lora_b=0.01, position=0.0)
    with pytest.raises(ValueError, match="already carries TempMe weights"):
        tempme_encoder(trained.backbone, other)


def test_video_positions_are_added_before_cross_clip_merges(tmp_path, fresh_backbone):
    backbone = fresh_backbone
    pixels = _pixels(2, 12, seed=5)
    free = TempMeEncoder(backbone).encode(pixels)
    encoder = tempme_encoder(backbone, _checkpoint(backbone, tmp_path / "pos.pth", 0.0, position=1.0))
    assert sorted((layer, p.shape[0]) for layer, p in encoder.positions.items()) == [(8, 12), (9, 6), (10, 3)]
    assert not torch.allclose(encoder.encode(pixels).embeddings, free.embeddings, atol=1e-3)
    # Segments without cross-clip merges (a single frame) never see them.
    one = _pixels(2, 1, seed=6)
    torch.testing.assert_close(encoder.encode(one).embeddings, TempMeEncoder(backbone).encode(one).embeddings)


def test_clip_positions_follow_where_each_clip_starts():
    table = torch.arange(6.0)[:, None]  # block 9's table: 6 clips of 2 frames in a 12-frame segment
    assert _clip_positions(table, clips=6, frames=12, trained_frames=12)[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert _clip_positions(table, clips=3, frames=6, trained_frames=12)[:, 0].tolist() == [0, 1, 2]
    assert _clip_positions(table, clips=9, frames=9, trained_frames=12)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert _clip_positions(table, clips=8, frames=16, trained_frames=12)[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 5, 5]


def test_bad_checkpoints_are_rejected(tmp_path, fresh_backbone):
    backbone = fresh_backbone
    path = tmp_path / "bad.pth"
    torch.save({"clip.visual.transformer.resblocks.0.attn.TVPt_LoRA_a": torch.zeros(8, backbone.width)}, path)
    with pytest.raises(ValueError, match="only LoRA a"):
        load_tempme_weights(path)
    torch.save({"clip.visual.TVPt_something": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unexpected TempMe parameter"):
        load_tempme_weights(path)
    good = _checkpoint(backbone, tmp_path / "good.pth", 0.0, 0.0)
    with pytest.raises(ValueError, match="merges clips at"):
        tempme_encoder(backbone, good, TempMeConfig(clip_layers=(7, 9, 10)))
