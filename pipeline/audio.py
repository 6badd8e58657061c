"""The audio data contract, fixed in one place (after openai-whisper's ``whisper/audio.py``).

Mismatched constants fail at import rather than producing subtly misaligned windows.
"""

SAMPLE_RATE = 16_000  # Hz, mono: what Whisper consumes.
CHUNK_SECONDS = 30  # one Whisper input window
MAX_WINDOW_MS = CHUNK_SECONDS * 1000
TIMESTAMP_RESOLUTION_MS = 20  # Whisper's timestamp tokens step <|0.00|> ... <|30.00|> every 20 ms
SAMPLES_PER_MS = SAMPLE_RATE // 1000
BYTES_PER_SAMPLE = 2  # we move audio as 16-bit little-endian PCM


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, f"{x} is not a multiple of {y}"
    return x // y


N_SAMPLES = exact_div(SAMPLE_RATE * CHUNK_SECONDS * 1000, 1000)  # 480_000 samples in a window
N_TIMESTAMP_STEPS = exact_div(MAX_WINDOW_MS, TIMESTAMP_RESOLUTION_MS)  # 1500 steps, 1501 tokens
assert SAMPLES_PER_MS * 1000 == SAMPLE_RATE


def ms_to_samples(ms: int) -> int:
    return ms * SAMPLES_PER_MS


def samples_to_ms(n: int) -> int:
    """Whole milliseconds of audio that ``n`` samples fully cover."""
    return n // SAMPLES_PER_MS


def snap_to_timestamp_grid(ms: int) -> int:
    """Round a time to the nearest 20 ms timestamp step (ties round down, like ``round`` on the step index)."""
    steps, rest = divmod(ms, TIMESTAMP_RESOLUTION_MS)
    if rest * 2 > TIMESTAMP_RESOLUTION_MS:
        steps += 1
    return steps * TIMESTAMP_RESOLUTION_MS


def timestamp_token(ms: int) -> str:
    """``<|1.84|>``: the Whisper timestamp token for a time already on the 20 ms grid."""
    assert ms % TIMESTAMP_RESOLUTION_MS == 0, ms
    return f"<|{ms / 1000:.2f}|>"
