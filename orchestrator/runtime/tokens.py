"""The generated text-classification task (``data.source: tokens``): token-id sequences whose class
depends on which marker tokens occur and in which order. Nothing is downloaded; always the same data.

Every sequence holds :data:`TOKENS_STEPS` ids below :data:`TOKENS_VOCAB`: random filler words (ids
4 and up), the markers ``A`` (id 1) and ``B`` (id 2) once each at random places, and the marker
``C`` (id 3) once in half the sequences. The class is ``2 * (C occurs) + (A comes before B)``, and
a share of the labels (:data:`TOKENS_LABEL_NOISE`) is replaced by a random class. A bag of words
sees A and B once in every sequence, so it can tell only whether C occurs (at most about half right,
chance is a quarter); a model that reads the order (an LSTM or GRU over embedded tokens) can reach
about 1 - 3/4 of the noise share.
"""

from __future__ import annotations

import numpy as np

from orchestrator.spec.shapes import TOKENS_STEPS, TOKENS_VOCAB

MARKER_A, MARKER_B, MARKER_C = 1, 2, 3
FIRST_FILLER = 4
TOKENS_ROWS = 3000
TOKENS_LABEL_NOISE = 0.05


def token_sequences(n: int = TOKENS_ROWS, steps: int = TOKENS_STEPS, vocab: int = TOKENS_VOCAB,
                    noise: float = TOKENS_LABEL_NOISE, seed: int = 4321) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of token ids, shaped (n, steps) (int64), and their classes 0-3 (n,)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(FIRST_FILLER, vocab, size=(n, steps), dtype=np.int64)
    has_c = rng.random(n) < 0.5
    # three distinct places per sequence: A's, B's and (where it occurs) C's
    places = np.argsort(rng.random((n, steps)), axis=1)[:, :3]
    rows = np.arange(n)
    x[rows, places[:, 0]] = MARKER_A
    x[rows, places[:, 1]] = MARKER_B
    x[rows[has_c], places[has_c, 2]] = MARKER_C
    y = 2 * has_c.astype(np.int64) + (places[:, 0] < places[:, 1]).astype(np.int64)
    noisy = rng.random(n) < noise
    y[noisy] = rng.integers(0, 4, size=int(noisy.sum()))
    return x, y
