"""The signal processing behind ``tones.fingerprint``, in pure Python.

No numpy on purpose: the point is CPU time spent in the interpreter, holding the GIL,
which is what ``Job(executor="process")`` is for. A tone is a sum of sines sampled at
8 kHz; its fingerprint is the strongest frequency of each frame (a windowed DFT over
half-overlapping frames of 64 ms), hashed.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import mul

RATE = 8000  # samples per second
FRAME = 512  # samples per frame: 64 ms, frequency bins 15.625 Hz apart
HOP = FRAME // 2  # frames overlap by half
BIN_HZ = RATE / FRAME
SILENCE = 1e-6  # a frame with less power than this in every bin has no peak


@dataclass(frozen=True)
class Tables:
    """The DFT basis times a Hann window, one row of FRAME values per frequency bin.

    Worth making once per process and keeping: 2 x 256 x 512 sines and cosines (tens of
    milliseconds here; a real fingerprinter's index or model takes seconds). ``build``
    names this making of them, ``by`` says who asked for it.
    """

    cos: tuple[tuple[float, ...], ...]
    sin: tuple[tuple[float, ...], ...]
    build: str
    by: str


def build_tables(by: str) -> Tables:
    window = [0.5 - 0.5 * math.cos(2 * math.pi * n / FRAME) for n in range(FRAME)]

    def row(wave: Callable[[float], float], k: int) -> tuple[float, ...]:
        return tuple(window[n] * wave(2 * math.pi * k * n / FRAME) for n in range(FRAME))

    cos = tuple(row(math.cos, k) for k in range(FRAME // 2))
    sin = tuple(row(math.sin, k) for k in range(FRAME // 2))
    return Tables(cos, sin, build=f"{os.getpid()}-{secrets.token_hex(4)}", by=by)


def tone(frequency: float, seconds: float, amplitude: float) -> list[float]:
    """A fundamental and two harmonics (at a half and a quarter of its amplitude)."""
    step = 2 * math.pi * frequency / RATE
    partials = ((1, 1.0), (2, 0.5), (3, 0.25))
    return [
        amplitude * sum(level * math.sin(harmonic * step * i) for harmonic, level in partials)
        for i in range(round(seconds * RATE))
    ]


def peaks(
    samples: list[float], tables: Tables, between_frames: Callable[[], None] = lambda: None
) -> list[int]:
    """The strongest frequency bin of each frame (-1 for a silent frame).

    ``between_frames`` is called before each frame: pass ``ctx.check_cancelled``.
    """
    found = []
    for start in range(0, len(samples) - FRAME + 1, HOP):
        between_frames()
        frame = samples[start : start + FRAME]
        best, best_power = -1, SILENCE
        for k in range(1, FRAME // 2):
            re = sum(map(mul, frame, tables.cos[k]))
            im = sum(map(mul, frame, tables.sin[k]))
            if (power := re * re + im * im) > best_power:
                best, best_power = k, power
        found.append(best)
    return found


def fingerprint(frame_peaks: list[int]) -> str:
    """A hash of the sequence of peaks: the same tone gives the same fingerprint."""
    return hashlib.sha256(",".join(map(str, frame_peaks)).encode()).hexdigest()[:32]


def dominant_hz(frame_peaks: list[int]) -> float | None:
    """The frequency that is the peak of most frames, or None if every frame is silent."""
    heard = Counter(k for k in frame_peaks if k >= 0)
    if not heard:
        return None
    [(k, _)] = heard.most_common(1)
    return k * BIN_HZ
