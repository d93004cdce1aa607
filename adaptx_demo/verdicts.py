"""Which runs of a learning-rate sweep diverged, which are stuck at chance level, and which learned.

A classifier over the digits' ten classes that has learned nothing scores
about 10 % (the classes are balanced: the largest is 10.2 % of the data). A run
whose final test accuracy is within :data:`CHANCE_MARGIN` of that is "at
chance": not diverged (its numbers are finite), but its learning rate is no more
use than a diverged one's, and the figures and tables mark both.

The loss is not part of the test: a final loss above ln 10 (the uniform
prediction's) is what a too-large step gives to a network that still classifies
70 % correctly, confidently wrong on the rest, and that run is not at chance.
"""
import numpy as np

CLASSES = 10
CHANCE_ACCURACY = 1 / CLASSES
# 450 test images: a guesser's accuracy has standard deviation √(0.1·0.9/450) ≈ 1.4 %,
# so 5 points (3.5 σ) above 10 % is beyond luck, and anything within it is no better than chance.
CHANCE_MARGIN = 0.05

LEARNED, CHANCE, DIVERGED = "learned", "chance", "diverged"
DEFINITION = (
    f"diverged: a non-finite loss during training; at chance: finite, but the final test accuracy is "
    f"≤ {CHANCE_ACCURACY + CHANCE_MARGIN:.0%} (chance, {CHANCE_ACCURACY:.0%}, plus {CHANCE_MARGIN:.0%})"
)


def classify(train_losses: np.ndarray, test_accuracy: np.ndarray) -> np.ndarray:
    """Per run, LEARNED, CHANCE or DIVERGED.

    ``train_losses``: (runs, records) training losses over the run, the last one
    final; ``test_accuracy``: (runs,) final test accuracy.
    """
    train_losses = np.asarray(train_losses, np.float64)
    test_accuracy = np.asarray(test_accuracy, np.float64)
    diverged = ~np.all(np.isfinite(train_losses), axis=-1) | ~np.isfinite(test_accuracy)
    with np.errstate(invalid="ignore"):  # NaNs are the diverged runs, decided above
        chance = test_accuracy <= CHANCE_ACCURACY + CHANCE_MARGIN
    return np.where(diverged, DIVERGED, np.where(chance, CHANCE, LEARNED))


def best(final_train_loss: np.ndarray, verdicts: np.ndarray) -> int:
    """Index of the lowest final training loss among the runs that learned (any finite one if none did)."""
    loss = np.asarray(final_train_loss, np.float64)
    usable = verdicts == LEARNED
    if not usable.any():
        usable = verdicts != DIVERGED
    if not usable.any():
        raise ValueError("every run diverged: no learning rate to report")
    return int(np.argmin(np.where(usable, loss, np.inf)))
