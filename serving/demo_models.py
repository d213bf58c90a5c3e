"""The two demo sentiment models: one small network, trained in two versions.

The task is `serving.synthetic`'s. `legacy_v1` is trained briefly on reviews without
negations, so it misreads "not good"; `paddle_new_v2` sees negations and trains longer.
Both are seeded, hence reproducible.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F

from serving.bundle import BundleMeta
from serving.export import export_bundle
from serving.synthetic import SEQ_LEN, VOCAB_SIZE, Reviews, make_reviews

SERVICE_NAME = "sentiment"


@dataclass(frozen=True)
class Recipe:
    """How one demo version is trained."""

    version: str
    seed: int
    train_size: int
    steps: int
    negation_rate: float
    hidden: int
    learning_rate: float = 0.01


RECIPES = {
    "sentiment_v1": Recipe(
        "legacy_v1", seed=11, train_size=4000, steps=80, negation_rate=0.0, hidden=24
    ),
    "sentiment_v2": Recipe(
        "paddle_new_v2", seed=22, train_size=8000, steps=400, negation_rate=0.35, hidden=32
    ),
}
HELD_OUT_SEED = 2026


class SentimentModel(paddle.nn.Layer):  # type: ignore[misc]
    """The demo model: Embedding -> 2-layer LSTM -> Linear on the last step -> softmax."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embedding = paddle.nn.Embedding(VOCAB_SIZE, 32)
        self.lstm = paddle.nn.LSTM(32, hidden, num_layers=2)
        self.classifier = paddle.nn.Linear(hidden, 2)

    def forward(self, x: Any) -> Any:
        sequence, _ = self.lstm(self.embedding(x))
        return F.softmax(self.classifier(sequence[:, -1, :]), axis=1)


def train(recipe: Recipe) -> SentimentModel:
    paddle.seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    data = make_reviews(recipe.train_size, seed=recipe.seed, negation_rate=recipe.negation_rate)
    model = SentimentModel(recipe.hidden)
    optimizer = paddle.optimizer.Adam(
        learning_rate=recipe.learning_rate, parameters=model.parameters()
    )
    model.train()
    for _ in range(recipe.steps):
        batch = rng.integers(0, recipe.train_size, size=64)
        probs = model(paddle.to_tensor(data.tokens[batch]))
        loss = paddle.nn.functional.nll_loss(
            paddle.log(probs + 1e-8), paddle.to_tensor(data.labels[batch])
        )
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model


def accuracy(model: SentimentModel, reviews: Reviews) -> float:
    with paddle.no_grad():
        probs = model(paddle.to_tensor(reviews.tokens)).numpy()
    return float((probs.argmax(axis=1) == reviews.labels).mean())


def build_demo_models(out_dir: Path) -> dict[str, tuple[BundleMeta, float]]:
    """Train, export and score both versions; returns bundle dir name -> (meta, accuracy)."""
    held_out = make_reviews(2000, seed=HELD_OUT_SEED)
    results: dict[str, tuple[BundleMeta, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for bundle_name, recipe in RECIPES.items():
            model = train(recipe)
            score = accuracy(model, held_out)
            prefix = Path(scratch) / bundle_name / "model"
            paddle.jit.save(
                model,
                str(prefix),
                input_spec=[
                    paddle.static.InputSpec(shape=[None, SEQ_LEN], dtype="int64", name="x")
                ],
            )
            meta = export_bundle(
                prefix,
                out_dir / bundle_name,
                name=SERVICE_NAME,
                version=recipe.version,
                fetch_names=["prob"],
                # A token id the embedding has no row for is the client's bad input.
                value_ranges={"x": (0, int(model.embedding.weight.shape[0]))},
            )
            results[bundle_name] = (meta, score)
    return results
