"""The LLaVA-OneVision reranker's mechanics on a tiny, randomly initialised model (same classes and code
path as the real ones): visual features and plain prefill identical to Hugging Face's own forward,
HoliTom's inner merge at layer k with the original rotary positions, tokens fed and prefill FLOPs with
full / HoliTom / VQToken tokens, batching that does not change scores."""

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.tiny_llava import TINY_LAYERS, save_tiny_llava, tiny_llava, tiny_tokenizer
from models.flops import analytic_prefill_flops, count_flops
from models.holitom import inner_llm_merge
from models.rerankers.llava import (
    LlavaReranker,
    LlmUnavailableError,
    llm_space_summary,
    pixels_for_tower,
)
from models.rerankers.prefill import (
    PROMPT_TEMPLATE,
    QUESTION,
    SYSTEM_PROMPT,
    InnerMergeParams,
    assemble,
    last_token_attention,
    plan_batches,
    yes_probability,
)

K = 2  # inner-merge layer of the 4-layer tiny LLM
QUERY = "a red ball"


@pytest.fixture(scope="module")
def reranker() -> LlavaReranker:
    tokenizer = tiny_tokenizer()
    return LlavaReranker(tiny_llava(len(tokenizer) + 1), tokenizer, "tiny", InnerMergeParams(layer=K, ratio=0.5))


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 40, 50, 3), dtype=np.uint8)


def test_tower_features_are_hugging_face_video_features(reranker: LlavaReranker) -> None:
    images = frames(6)
    features = reranker.encode_frames(images, chunk=4)  # two chunks
    assert features.tokens.shape == (6, reranker.tokens_per_frame, 64) and reranker.tokens_per_frame == 16
    pixels = pixels_for_tower(images, reranker.image_size, reranker.device, reranker.dtype)
    with torch.inference_mode():
        hf = reranker.model.model.get_video_features(pixels[None], return_dict=True).pooler_output[0]
    torch.testing.assert_close(reranker.visual_inputs(features.tokens.flatten(0, 1)), hf)
    # the attention each token receives: a pooled distribution over the 7 x 7 grid, positive everywhere
    assert features.attention.shape == (6, 16) and bool((features.attention > 0).all())


def hf_last_logits(reranker: LlavaReranker, images: np.ndarray) -> torch.Tensor:
    """Hugging Face's own forward over the whole prompt with the video placeholders expanded."""
    tok, config = reranker.tokenizer, reranker.model.config
    prefix, suffix = PROMPT_TEMPLATE.split("{video}")
    visual = len(images) * reranker.tokens_per_frame + 1
    ids = (tok.encode(prefix.format(system=SYSTEM_PROMPT), add_special_tokens=False) + [config.video_token_index] * visual
           + tok.encode(suffix.format(question=QUESTION.format(query=QUERY)), add_special_tokens=False))
    pixels = pixels_for_tower(images, reranker.image_size, reranker.device, reranker.dtype)
    with torch.inference_mode():
        return reranker.model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels[None]).logits[0, -1]


def test_plain_prefill_reproduces_the_hugging_face_forward(reranker: LlavaReranker) -> None:
    images = frames(4, seed=1)
    full = reranker.visual_inputs(reranker.encode_frames(images).tokens.flatten(0, 1))
    out = reranker.score(QUERY, [full], merge=False)
    expected = hf_last_logits(reranker, images)
    with torch.inference_mode():
        torch.testing.assert_close(reranker.model.lm_head(out.prefill.last_hidden)[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.p_yes, yes_probability(expected[None], reranker.yes_ids, reranker.no_ids))
    assert out.prefill.layer_lengths == [out.prefill.tokens_fed.item()] * TINY_LAYERS


def test_last_token_attention_is_the_eager_attention_row(reranker: LlavaReranker) -> None:
    lm = reranker.model.model.language_model
    prefix, suffix = reranker.prompt_embeddings(QUERY)
    batch = assemble(prefix, [reranker.visual_inputs(reranker.encode_frames(frames(2)).tokens.flatten(0, 1))], suffix)
    mask = torch.zeros(1, 1, batch.embeds.shape[1], batch.embeds.shape[1]).masked_fill(
        ~torch.ones(batch.embeds.shape[1], batch.embeds.shape[1], dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    with torch.inference_mode():
        rotary = lm.rotary_emb(batch.embeds, batch.positions)
        mine = last_token_attention(lm.layers[0], batch.embeds, rotary, mask)
        previous = lm.config._attn_implementation
        lm.config._attn_implementation = "eager"
        try:
            out = lm(inputs_embeds=batch.embeds, output_attentions=True)
        finally:
            lm.config._attn_implementation = previous
    torch.testing.assert_close(mine, out.attentions[0][:, :, -1].mean(dim=1))


def test_inner_merge_runs_at_layer_k_and_keeps_the_original_positions(reranker: LlavaReranker) -> None:
    visual = reranker.visual_inputs(reranker.encode_frames(frames(3, seed=2)).tokens.flatten(0, 1))  # 49 tokens
    prefix, suffix = reranker.prompt_embeddings(QUERY)
    p, v, s = prefix.shape[0], visual.shape[0], suffix.shape[0]
    seen: dict[int, torch.Tensor] = {}
    layers = reranker.model.model.language_model.layers
    hooks = [layer.register_forward_pre_hook(lambda _m, args, kwargs, i=i: seen.__setitem__(i, args[0].clone()), with_kwargs=True)
             for i, layer in enumerate(layers)]
    try:
        out = reranker.score(QUERY, [visual])
    finally:
        for h in hooks:
            h.remove()
    keep = round(v * 0.5)
    assert out.prefill.layer_lengths == [p + v + s] * K + [p + keep + s] * (TINY_LAYERS - K)
    assert out.prefill.visual_tokens.tolist() == [v] and out.prefill.visual_tokens_merged.tolist() == [keep]
    # positions: the prompt's own, the kept visual tokens' original ones (a strictly increasing subset), the suffix unshifted
    positions = out.prefill.positions[0]
    assert positions[:p].tolist() == list(range(p)) and positions[p + keep :].tolist() == list(range(p + v, p + v + s))
    kept = positions[p : p + keep] - p
    assert bool((kept.diff() > 0).all()) and 0 <= int(kept.min()) and int(kept.max()) < v
    # layer k's input is HoliTom's merge of its span, ranked by layer k-1's last-token attention
    lm = reranker.model.model.language_model
    batch = assemble(prefix, [visual], suffix)
    mask = torch.zeros(1, 1, p + v + s, p + v + s).masked_fill(~torch.ones(p + v + s, p + v + s, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    with torch.inference_mode():
        rotary = lm.rotary_emb(seen[K - 1], batch.positions)
        attention = last_token_attention(layers[K - 1], seen[K - 1], rotary, mask)
        layer_k_out = layers[K - 1](seen[K - 1], attention_mask=mask, position_embeddings=rotary)
    merged = inner_llm_merge(layer_k_out[:, p : p + v], attention[:, p : p + v], 0.5)
    assert merged.kept[0].tolist() == kept.tolist()
    torch.testing.assert_close(seen[K][0, p : p + keep], merged.hidden[0])
    torch.testing.assert_close(seen[K][0, :p], layer_k_out[0, :p])


def test_batching_and_padding_do_not_change_scores(reranker: LlavaReranker) -> None:
    a = reranker.visual_inputs(reranker.encode_frames(frames(3, seed=3)).tokens.flatten(0, 1))
    b = reranker.visual_inputs(reranker.encode_frames(frames(1, seed=4)).tokens.flatten(0, 1))
    for merge in (False, True):
        together = reranker.score(QUERY, [a, b], merge=merge).p_yes
        alone = torch.cat([reranker.score(QUERY, [x], merge=merge).p_yes for x in (a, b)])
        torch.testing.assert_close(together, alone)


def test_tokens_fed_and_prefill_flops_full_vs_holitom_vs_vqtoken(reranker: LlavaReranker) -> None:
    images = frames(8, seed=5)
    features = reranker.encode_frames(images)
    times = [float(t) for t in range(8)]
    full = reranker.visual_inputs(features.tokens.flatten(0, 1))
    holi = llm_space_summary(features, times, "holitom", retain_ratio=0.10)
    vq = llm_space_summary(features, times, "vqtoken", num_codes=8)
    assert full.shape[0] == 8 * 16 + 1
    assert holi.num_tokens <= 0.10 * 8 * 16 + 8 and vq.num_tokens <= 8  # per-frame ceil adds at most one per frame
    prefix, suffix = reranker.prompt_embeddings(QUERY)
    text = prefix.shape[0] + suffix.shape[0]
    config = reranker.model.config.text_config
    flops = {}
    for name, tokens, merge in [("full", full, False), ("holitom", reranker.visual_inputs(holi.tokens), False),
                                ("holitom+merge", reranker.visual_inputs(holi.tokens), True),
                                ("vqtoken", reranker.visual_inputs(vq.tokens), False)]:
        out = reranker.score(QUERY, [tokens], merge=merge)
        assert out.prefill.tokens_fed.item() == text + tokens.shape[0]
        _, flops[name] = count_flops(lambda t=tokens, m=merge: reranker.score(QUERY, [t], merge=m))
        assert flops[name] == analytic_prefill_flops(config, text, tokens.shape[0], reranker.inner if merge else None)
    assert flops["holitom+merge"] < flops["holitom"] < 0.5 * flops["full"] and flops["vqtoken"] < flops["holitom"]


def test_vqtoken_codes_in_llm_space_are_means_of_the_raw_tokens(reranker: LlavaReranker) -> None:
    features = reranker.encode_frames(frames(4, seed=6))
    vq = llm_space_summary(features, [0.0, 1.0, 2.0, 3.0], "vqtoken", num_codes=5)
    flat = features.tokens.flatten(0, 1).float()
    for code in range(vq.num_tokens):
        torch.testing.assert_close(vq.tokens[code], flat[vq.index_map.flatten() == code].mean(dim=0))
    assert vq.frame_times.tolist() == [0.0, 1.0, 2.0, 3.0] and vq.num_patches == 16
    with pytest.raises(ValueError, match="unknown LLM summary method"):
        llm_space_summary(features, [0.0] * 4, "tome")


def test_yes_probability_and_batch_planning() -> None:
    logits = torch.tensor([[0.0, 2.0, 0.0, 1.0, 5.0], [0.0, -1.0, -1.0, 1.0, 9.0]])
    p = yes_probability(logits, yes_ids=[1, 2], no_ids=[3])  # token 4 (not an answer word) does not count
    expected = torch.tensor([(np.e**2 + 1) / (np.e**2 + 1 + np.e), 2 * np.e**-1 / (2 * np.e**-1 + np.e)], dtype=torch.float32)
    torch.testing.assert_close(p, expected)
    assert plan_batches([10, 10, 10, 30, 5], max_tokens=30) == [[0, 1, 2], [3], [4]]
    assert plan_batches([50, 10], max_tokens=30) == [[0], [1]]


def test_load_from_a_directory_and_unavailable_models(tmp_path: Path) -> None:
    folder = save_tiny_llava(tmp_path / "tiny-llava")
    loaded = LlavaReranker.load(str(folder), "cpu", InnerMergeParams(layer=K))
    assert loaded.yes_ids and loaded.no_ids and loaded.inner == InnerMergeParams(layer=K)
    with pytest.raises(LlmUnavailableError, match="cannot load"):
        LlavaReranker.load(str(tmp_path / "missing"), "cpu")
    with pytest.raises(ValueError, match="layers"):
        LlavaReranker(loaded.model, loaded.tokenizer, "tiny", InnerMergeParams(layer=TINY_LAYERS))
