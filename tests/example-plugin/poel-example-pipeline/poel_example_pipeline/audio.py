"""The signal processing behind the pipeline's two process jobs, in pure Python.

It knows nothing of Poel. Audio is 16-bit mono WAV, read into floats from -1 to 1. A
*fingerprint* is a set of landmarks, pairs of spectral peaks a few frames apart
(``(f1, f2, dt)``, as audio-matching systems build them), hashed; the same audio gives the
same fingerprint. *Separating into bands* splits the spectrum of the whole file into
frequency bands (``EDGES_HZ``) and turns each back into audio: the bands add up to the
original. ``demo_audio`` makes a deterministic test signal, one tone in each band.
"""

from __future__ import annotations

import array
import cmath
import hashlib
import math
import os
import random
import sys
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

RATE = 8000  # samples per second of the demo audio
# Between the bands: the first starts at 0 Hz, the last ends at half the sample rate.
EDGES_HZ = (250.0, 500.0, 1000.0, 2000.0)
FRAME = 1024  # samples per fingerprint frame (128 ms at 8 kHz)
HOP = FRAME // 2
PEAKS_PER_FRAME = 3
FAN_OUT = 3  # a peak is paired with the peaks of this many frames after its own
SILENCE = 1e-3  # a spectral peak weaker than this (in amplitude) is no peak

Samples = list[float]


# Files ---------------------------------------------------------------------------------


def write_wav(path: str | Path, samples: Sequence[float], rate: int = RATE) -> None:
    """Write 16-bit mono WAV, samples clipped to [-1, 1]; written beside and renamed into
    place, so that a reader never sees half a file (a job stopped mid-write leaves none)."""
    pcm = array.array("h", (round(max(-1.0, min(1.0, s)) * 32767) for s in samples))
    if sys.byteorder == "big":
        pcm.byteswap()  # WAV is little-endian
    partial = Path(f"{path}.partial")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    os.replace(partial, path)


def read_wav(path: str | Path) -> tuple[Samples, int]:
    """The samples of a 16-bit mono WAV file, and its sample rate."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth()) != (1, 2):
            raise ValueError(f"{path}: expected 16-bit mono WAV")
        rate = wav.getframerate()
        pcm = array.array("h", wav.readframes(wav.getnframes()))
    if sys.byteorder == "big":
        pcm.byteswap()
    return [s / 32767 for s in pcm], rate


def demo_tones(seed: int) -> list[float]:
    """The demo's tones for ``seed``: one frequency (whole Hz) well inside each band."""
    rng = random.Random(seed)
    lows = (0.0, *EDGES_HZ)
    highs = (*EDGES_HZ, RATE / 2)
    return [
        float(round(lo + (hi - lo) * rng.uniform(0.3, 0.7)))
        for lo, hi in zip(lows, highs, strict=True)
    ]


def demo_audio(seed: int, seconds: float = 3.0) -> Samples:
    """``seconds`` of the demo's tones (quieter the higher) over a little noise, made from
    ``seed`` alone: the same seed gives the same samples."""
    rng = random.Random(seed)
    tones = demo_tones(seed)
    levels = [0.3, 0.2, 0.15, 0.1, 0.05]
    steps = [2 * math.pi * f / RATE for f in tones]
    return [
        sum(level * math.sin(step * i) for level, step in zip(levels, steps, strict=True))
        + rng.gauss(0, 0.005)
        for i in range(round(seconds * RATE))
    ]


# Spectra -------------------------------------------------------------------------------


def fft(values: Sequence[complex], inverse: bool = False) -> list[complex]:
    """The discrete Fourier transform of ``values`` (a power of two of them), radix-2."""
    n = len(values)
    if n == 0 or n & (n - 1):
        raise ValueError(f"fft of {n} values: needs a power of two")
    bits = n.bit_length() - 1
    out = [complex(values[int(f"{i:0{bits}b}"[::-1], 2)]) for i in range(n)]  # bit-reversed
    sign = 1 if inverse else -1
    size = 2
    while size <= n:
        half = size // 2
        twiddles = [cmath.exp(sign * 2j * math.pi * k / size) for k in range(half)]
        for start in range(0, n, size):
            for k, twiddle in enumerate(twiddles):
                a, b = out[start + k], out[start + k + half] * twiddle
                out[start + k], out[start + k + half] = a + b, a - b
        size *= 2
    return [v / n for v in out] if inverse else out


def padded_size(n: int) -> int:
    """The smallest power of two holding ``n`` samples."""
    return 1 << max(0, n - 1).bit_length()


def peak_hz(samples: Samples, rate: int) -> float:
    """The strongest frequency of the whole signal (0.0 for silence)."""
    n = padded_size(len(samples))
    spectrum = fft([*samples, *[0.0] * (n - len(samples))])
    k = max(range(n // 2 + 1), key=lambda k: abs(spectrum[k]))
    return k * rate / n


# The fingerprint -----------------------------------------------------------------------


def frame_peaks(
    samples: Samples, between_frames: Callable[[], None] = lambda: None
) -> list[list[int]]:
    """For each frame (Hann-windowed, half-overlapping), its strongest spectral peaks
    (local maxima of the magnitude) as frequency bins, strongest first.

    ``between_frames`` is called before each frame: pass ``ctx.check_cancelled``.
    """
    window = [0.5 - 0.5 * math.cos(2 * math.pi * i / FRAME) for i in range(FRAME)]
    found = []
    for start in range(0, len(samples) - FRAME + 1, HOP):
        between_frames()
        spectrum = fft([s * w for s, w in zip(samples[start : start + FRAME], window, strict=True)])
        # amplitude of a full-scale sine: FRAME / 4 under a Hann window
        level = [abs(v) * 4 / FRAME for v in spectrum[: FRAME // 2]]
        local = [
            k
            for k in range(1, FRAME // 2 - 1)
            if level[k] > SILENCE and level[k - 1] < level[k] >= level[k + 1]
        ]
        found.append(sorted(local, key=lambda k: -level[k])[:PEAKS_PER_FRAME])
    return found


def fingerprint(
    samples: Samples, rate: int, between_frames: Callable[[], None] = lambda: None
) -> dict[str, object]:
    """The audio's fingerprint: ``digest`` (a hash of its set of landmarks, the same for
    the same audio), ``landmarks`` (how many), ``frames``, and ``peaks_hz`` (the
    frequencies that are a peak of most frames, the commonest first)."""
    peaks = frame_peaks(samples, between_frames)
    landmarks = {
        (f1, f2, dt)
        for t, anchors in enumerate(peaks)
        for f1 in anchors
        for dt in range(1, FAN_OUT + 1)
        if t + dt < len(peaks)
        for f2 in peaks[t + dt]
    }
    text = ";".join(f"{f1},{f2},{dt}" for f1, f2, dt in sorted(landmarks))
    counts = Counter(k for frame in peaks for k in frame)
    return {
        "digest": hashlib.sha256(text.encode()).hexdigest()[:32],
        "landmarks": len(landmarks),
        "frames": len(peaks),
        "peaks_hz": [round(k * rate / FRAME, 1) for k, _ in counts.most_common(PEAKS_PER_FRAME)],
    }


# Bands ---------------------------------------------------------------------------------


def bands_of(rate: int) -> list[tuple[float, float]]:
    """The bands ``(low, high)`` in Hz for a sample rate: from 0 Hz to half the rate."""
    nyquist = rate / 2
    if nyquist <= EDGES_HZ[-1]:
        raise ValueError(f"a sample rate of {rate} Hz has no room for bands above {EDGES_HZ[-1]}")
    lows = (0.0, *EDGES_HZ)
    return list(zip(lows, (*EDGES_HZ, nyquist), strict=True))


@dataclass(frozen=True)
class Band:
    """One band of a signal: its frequencies ``[low, high)`` in Hz, its samples, and the
    strongest frequency in it."""

    low: float
    high: float
    samples: Samples
    peak_hz: float


def separate(
    samples: Samples, rate: int, between_bands: Callable[[], None] = lambda: None
) -> list[Band]:
    """The signal split into ``bands_of(rate)``: each band is the signal with every
    frequency outside ``[low, high)`` removed (the last band keeps ``high``). Each
    frequency is in exactly one band, so the bands add up to the signal.

    ``between_bands`` is called before each band: pass ``ctx.check_cancelled``.
    """
    n = padded_size(len(samples))
    spectrum = fft([*samples, *[0.0] * (n - len(samples))])
    bands = bands_of(rate)
    found = []
    for i, (low, high) in enumerate(bands):
        between_bands()
        last = i == len(bands) - 1
        inside = [
            k
            for k in range(n // 2 + 1)
            if low <= k * rate / n < high or (last and k * rate / n == high)
        ]
        kept = [0j] * n
        for k in inside:
            kept[k], kept[-k] = spectrum[k], spectrum[-k]  # and its mirror (itself at 0 Hz)
        strongest = max(inside, key=lambda k: abs(spectrum[k]))
        wave_back = fft(kept, inverse=True)
        found.append(
            Band(low, high, [v.real for v in wave_back[: len(samples)]], strongest * rate / n)
        )
    return found


def rms(samples: Samples) -> float:
    """The root mean square: the band's loudness."""
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0
