"""Constants shared across rvcfast's stages (one place, so no stage hard-codes them).

Everything between decoding and synthesis runs at :data:`SR_16K`; F0 tracks have one
frame per :data:`F0_HOP` samples (10 ms) and content features one frame per
:data:`FEATURE_HOP` samples (20 ms), doubled to the F0 rate before synthesis.
"""

from __future__ import annotations

__all__ = [
    "SR_16K",
    "F0_HOP",
    "FEATURE_HOP",
    "FEATURE_WINDOW",
    "F0_MIN",
    "F0_MAX",
    "INPUT_PEAK",
    "OUTPUT_PEAK",
    "HIGHPASS_HZ",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "LONG_INPUT_SAMPLES",
]

#: Sample rate of the signal every model sees (content encoder, F0 trackers).
SR_16K = 16000
#: Samples per F0 frame at 16 kHz (100 frames per second).
F0_HOP = 160
#: Samples per content-encoder frame at 16 kHz (50 frames per second).
FEATURE_HOP = 320
#: Receptive field of the content encoder's convolutional front end, in samples.
FEATURE_WINDOW = 400
#: Pitch range of RVC's coarse quantisation, in Hz.
F0_MIN = 50.0
F0_MAX = 1100.0
#: Input peak guard: louder inputs are scaled down to this peak (quieter ones are untouched).
INPUT_PEAK = 0.95
#: Output peak guard: louder outputs are scaled down to this peak.
OUTPUT_PEAK = 0.99
#: Cut-off of RVC's zero-phase Butterworth high-pass on the 16 kHz input.
HIGHPASS_HZ = 48
#: Accepted input sample rates.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
#: 16 kHz inputs longer than this (10 minutes) take the blockwise, bounded-memory paths.
LONG_INPUT_SAMPLES = SR_16K * 600
