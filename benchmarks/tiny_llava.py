"""A randomly initialised, tiny LLaVA-OneVision (same classes and code path as the real ones) and a
word-level tokenizer with Qwen's chat markers, for the llm reranker's tests and ``benchmarks/rerank_bench.py``
(at LLaVA-OV's real input geometry) without downloading weights. It lives here, not in ``tests/``, so
that imports go one way: tests -> benchmarks (as ``benchmarks.common.temporary_database``), never back.

Vision: SigLIP, 2 layers, width 32; by default 56 px with 8 px patches (a 7 x 7 grid, 16 tokens per frame
after LLaVA-OV's 2 x 2 pooling; 384 px / 14 px gives LLaVA-OV's 27 x 27 -> 196). Language: Qwen2, width
64, 4 query / 2 key-value heads, 4 layers by default.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

SPECIAL = ["<|im_start|>", "<|im_end|>", "<video>"]
WORDS = (
    "system user assistant You are a helpful assistant. Does this video show: Answer yes or no. Yes No no "
    "red ball blue square stripes snow scene the a dog cat car moving ? \n"
).split(" ")
TINY_LAYERS = 4


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", *SPECIAL, *dict.fromkeys(WORDS)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split("?", "isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", additional_special_tokens=SPECIAL)


def tiny_llava(vocab_size: int, seed: int = 0, image_size: int = 56, patch_size: int = 8,
               layers: int = TINY_LAYERS) -> LlavaOnevisionForConditionalGeneration:
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch_size, vision_use_head=False)
    text = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    video_token = vocab_size - 1  # never produced by the prompt: the tokenizer maps "<video>" elsewhere
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=video_token,
                                  video_token_index=video_token)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlavaOnevisionForConditionalGeneration(config).eval()


def save_tiny_llava(folder: Path, **geometry: int) -> Path:
    """Write the tiny model (``geometry``: :func:`tiny_llava`'s image_size, patch_size, layers) and its
    tokenizer to ``folder``; ``from_pretrained`` loads it offline."""
    tokenizer = tiny_tokenizer()
    tiny_llava(len(tokenizer) + 1, **geometry).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
