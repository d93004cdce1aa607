"""Two-dimensional test functions for drawing optimizer paths over contours."""
from typing import Callable, NamedTuple

import numpy as np


class Problem(NamedTuple):
    name: str  # file-name stem
    title: str
    formula: str
    loss: Callable  # params of shape (2,) -> scalar; also evaluates a (2, ...) grid
    start: tuple
    minimum: tuple
    steps: int
    xlim: tuple
    ylim: tuple

    def grid(self, points: int = 300):
        """(X, Y, loss) on a mesh over the plotting window, for contours."""
        x, y = np.meshgrid(np.linspace(*self.xlim, points), np.linspace(*self.ylim, points))
        # NumPy, not jnp: the losses are plain arithmetic, and eager jnp compiles a program per operation.
        return x, y, np.asarray(self.loss(np.stack([x, y])))


CONDITION = 100.0


def ill_conditioned_quadratic(p):
    """½((x − 1)² + κ(y − 1)²): curvature κ = 100 times larger along y than along x.

    The minimum sits at (1, 1), away from the origin, so weight decay cannot help.
    """
    return 0.5 * ((p[0] - 1) ** 2 + CONDITION * (p[1] - 1) ** 2)


def rosenbrock(p):
    """(1 − x)² + 100(y − x²)² (Rosenbrock, 1960): a curved, flat-bottomed valley."""
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


PROBLEMS = (
    Problem(
        "quadratic", "Ill-conditioned quadratic", "f(x, y) = ½((x − 1)² + 100·(y − 1)²)",
        ill_conditioned_quadratic, start=(-4.0, 2.0), minimum=(1.0, 1.0), steps=200,
        xlim=(-4.5, 2.5), ylim=(-0.25, 2.25),
    ),
    Problem(
        "rosenbrock", "Rosenbrock", "f(x, y) = (1 − x)² + 100·(y − x²)²",
        rosenbrock, start=(-1.5, 2.0), minimum=(1.0, 1.0), steps=1000,
        xlim=(-2.0, 2.0), ylim=(-1.0, 3.0),
    ),
)
