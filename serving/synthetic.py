"""A small, learnable synthetic sentiment task (numpy only: the demo traffic uses it too).

A review is a run of token ids. Some tokens carry polarity (positive or negative), a negation
token flips the polarity of the next polar token, the rest is filler; the label is the sign of
the summed polarity, with a little label noise. Reviews are left-padded to SEQ_LEN so that an
RNN's last time step sees the end of the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEQ_LEN = 128
VOCAB_SIZE = 1000
PAD, NEGATION = 0, 1
POSITIVE = np.arange(10, 60)
NEGATIVE = np.arange(60, 110)
FILLER_START = 110
LABEL_NOISE = 0.03


@dataclass(frozen=True)
class Reviews:
    tokens: np.ndarray  # int64 [n, SEQ_LEN]
    labels: np.ndarray  # int64 [n], 1 = positive


def make_reviews(n: int, seed: int, negation_rate: float = 0.35) -> Reviews:
    """`n` synthetic reviews; `negation_rate` is the chance that a polar word is negated."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, SEQ_LEN), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    row = 0
    while row < n:
        length = int(rng.integers(12, 48))
        text = rng.integers(FILLER_START, VOCAB_SIZE, size=length)
        n_polar = int(rng.integers(1, 5))
        positions = np.sort(rng.choice(np.arange(1, length), size=n_polar, replace=False))
        score = 0
        for pos in positions:
            positive = bool(rng.random() < 0.5)
            text[pos] = rng.choice(POSITIVE if positive else NEGATIVE)
            polarity = 1 if positive else -1
            if rng.random() < negation_rate and text[pos - 1] != NEGATION:
                text[pos - 1] = NEGATION
                polarity = -polarity
            score += polarity
        if score == 0:
            continue  # ambiguous review: draw another
        label = int(score > 0)
        if rng.random() < LABEL_NOISE:
            label = 1 - label
        tokens[row, SEQ_LEN - length :] = text
        labels[row] = label
        row += 1
    return Reviews(tokens, labels)
