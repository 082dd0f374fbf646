from pathlib import Path

import pytest
import torch

from models.backbone import ClipBackbone
from models.factory import WeightsUnavailableError, load_backbone, model_embed_dim, weights_identity
from models.vit_blocks import run_block
from tests.conftest import TINY_CONFIG_DIR, TINY_MODEL


def test_local_checkpoint_loads_the_same_weights(tiny_backbone: ClipBackbone, tiny_checkpoint: Path) -> None:
    loaded = load_backbone(TINY_MODEL, str(tiny_checkpoint), "cpu", TINY_CONFIG_DIR)
    for (name, a), b in zip(tiny_backbone.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.key == f"{TINY_MODEL}:{weights_identity(str(tiny_checkpoint))}"
    assert weights_identity(str(tiny_checkpoint)).startswith("file-")


def test_random_weights_are_explicit_and_seeded() -> None:
    a = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR)
    b = load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR)
    assert a.key.endswith("random-seed0")
    assert torch.equal(a.visual.conv1.weight, b.visual.conv1.weight)


def test_unreachable_pretrained_weights_explain_the_offline_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not cached and no network: fails with a typed error that says how to use a local checkpoint,
    without touching the process-global HF_HUB_OFFLINE switch and without a DNS probe of its own."""
    import socket
    import time

    from huggingface_hub import constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the hub client's retry back-off (~25 s)
    offline = constants.HF_HUB_OFFLINE
    with pytest.raises(WeightsUnavailableError, match=r"not in the local cache.*VIDSEEK_PRETRAINED=/path/to/open_clip_pytorch_model\.bin"):
        load_backbone("ViT-B-32", "openai", "cpu")
    assert constants.HF_HUB_OFFLINE == offline


def test_offline_mode_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 (the user's switch) and nothing cached: the same clear error, no network call."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="VIDSEEK_PRETRAINED="):
        load_backbone("ViT-B-32", "openai", "cpu")


@pytest.mark.parametrize(
    "model, pretrained, message",
    [
        ("ViT-B-32", "no-such-tag", "neither a file nor a pretrained tag"),
        ("NoSuchNet", "random", "unknown open_clip model"),
    ],
)
def test_bad_model_or_weights_are_named(model: str, pretrained: str, message: str) -> None:
    with pytest.raises(WeightsUnavailableError, match=message):
        load_backbone(model, pretrained, "cpu")


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot load checkpoint"):
        load_backbone(TINY_MODEL, str(bad), "cpu", TINY_CONFIG_DIR)


def test_frame_encoding_matches_open_clip(tiny_backbone: ClipBackbone) -> None:
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = tiny_backbone.encode_frames(pixels)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(tiny_backbone.model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(out.embeddings, reference, atol=1e-5, rtol=1e-5)
    assert out.hidden.shape == (3, 50, 64) and out.cls_attention.shape == (3, 49)
    assert (out.cls_attention > 0).all() and (out.cls_attention.sum(-1) < 1).all()
    torch.testing.assert_close(tiny_backbone.project(out.hidden[:, 0]), tiny_backbone.model.encode_image(pixels))


def test_step_by_step_block_equals_the_fused_module(tiny_backbone: ClipBackbone) -> None:
    x = torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(1))
    block = tiny_backbone.visual.transformer.resblocks[3]
    with torch.inference_mode():
        torch.testing.assert_close(run_block(block, x).x, block(x), atol=1e-5, rtol=1e-5)
        # proportional attention with unit sizes is plain attention
        torch.testing.assert_close(run_block(block, x, size=torch.ones(2, 50, 1)).x, block(x), atol=1e-5, rtol=1e-5)


def test_text_and_pixels(tiny_backbone: ClipBackbone) -> None:
    text = tiny_backbone.encode_text(["a dog", "a cat"])
    assert text.shape == (2, 32) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    frames = torch.full((2, 224, 224, 3), 255, dtype=torch.uint8)
    pixels = tiny_backbone.pixels_from_frames(frames)
    assert pixels.shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match="expected frames"):
        tiny_backbone.pixels_from_frames(torch.zeros(1, 100, 100, 3, dtype=torch.uint8))
    assert model_embed_dim(TINY_MODEL, TINY_CONFIG_DIR) == 32 and model_embed_dim("ViT-B-32") == 512
