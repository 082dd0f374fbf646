from pathlib import Path

import pytest

from search.settings import Settings, SettingsError


def test_from_env_reads_typed_values(tmp_path: Path) -> None:
    env = {
        "VIDSEEK_DATA_DIR": str(tmp_path),
        "VIDSEEK_MEDIA_ROOTS": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        "VIDSEEK_SAMPLE_FPS": "2.5",
        "VIDSEEK_SEGMENT_FRAMES": "8",
        "VIDSEEK_ENCODER": "tempme",
        "VIDSEEK_PRECISION": "bf16",
        "VIDSEEK_API_KEY": "s3cret",
        "VIDSEEK_SEARCH_THREADS": "3",
        "VIDSEEK_INDEX_LISTS": "fp16",
        "UNRELATED": "x",
    }
    s = Settings.from_env(env)
    assert s.data_dir == tmp_path
    assert s.media_roots == (tmp_path / "a", tmp_path / "b")
    assert s.sample_fps == 2.5 and s.segment_frames == 8
    assert s.encoder == "tempme" and s.api_key == "s3cret" and s.precision == "bf16"
    assert s.resolved_search_threads == 3 and 1 <= Settings().resolved_search_threads <= 2  # 0: auto, min(2, CPUs)
    assert s.index_lists == "fp16" and Settings().index_lists == "fp32"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'catalog.db'}"
    assert s.resolved_index_dir == tmp_path / "index"
    assert s.runs_in_process


def test_defaults_and_allowed_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=tmp_path / "d")
    assert s.model == "ViT-B-32" and s.pretrained == "openai" and s.precision == "auto"
    assert s.allowed_media_roots == (tmp_path.resolve(), (tmp_path / "d/uploads").resolve(), (tmp_path / "d/samples").resolve())
    assert not Settings(broker_url="redis://x").runs_in_process


@pytest.mark.parametrize(
    "env, message",
    [
        ({"VIDSEEK_ENCODER": "fast"}, "VIDSEEK_ENCODER"),
        ({"VIDSEEK_PRECISION": "int8"}, "VIDSEEK_PRECISION"),
        ({"VIDSEEK_SUMMARY": "zip"}, "VIDSEEK_SUMMARY"),
        ({"VIDSEEK_INDEX_TYPE": "lsh"}, "VIDSEEK_INDEX_TYPE"),
        ({"VIDSEEK_SAMPLE_FPS": "0"}, "VIDSEEK_SAMPLE_FPS"),
        ({"VIDSEEK_SEGMENT_FRAMES": "twelve"}, "VIDSEEK_SEGMENT_FRAMES"),
        ({"VIDSEEK_RERANK": "colbert"}, "VIDSEEK_RERANK"),
        ({"VIDSEEK_RERANK": "llm"}, "VIDSEEK_LLM_RERANKER"),
        ({"VIDSEEK_RERANK_WEIGHT": "1.5"}, "VIDSEEK_RERANK_WEIGHT"),
        ({"VIDSEEK_LLM_SUMMARY": "zip"}, "VIDSEEK_LLM_SUMMARY"),
        ({"VIDSEEK_LLM_INNER_RATIO": "1"}, "VIDSEEK_LLM_INNER_RATIO"),
        ({"VIDSEEK_SEARCH_THREADS": "-1"}, "VIDSEEK_SEARCH_THREADS"),
        ({"VIDSEEK_INDEX_LISTS": "int8"}, "VIDSEEK_INDEX_LISTS"),
    ],
)
def test_bad_values_are_named(env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_default_reranker_follows_the_summaries() -> None:
    assert Settings().default_rerank == "none"
    assert Settings(summary="vqtoken").default_rerank == "late"
    assert Settings(summary="holitom", rerank="none").default_rerank == "none"
    env = {"VIDSEEK_RERANK": "llm", "VIDSEEK_LLM_RERANKER": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
           "VIDSEEK_RERANK_K": "20", "VIDSEEK_RERANK_TIMEOUT": "2.5", "VIDSEEK_LLM_INNER_LAYER": "12"}
    s = Settings.from_env(env)
    assert (s.default_rerank, s.rerank_k, s.rerank_timeout, s.llm_inner_layer) == ("llm", 20, 2.5, 12)
