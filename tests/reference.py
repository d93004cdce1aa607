"""Plain-NumPy reference optimizers, written from the papers' update equations.

Each reference is a small stateful object in the style of torch.optim: built
from the initial params (a list of leaves, i.e. a flattened pytree), then
``step(grads, params)`` returns this step's updates, ``−η·d``, and
``direction(grads, params)`` the step direction ``d`` alone (what adaptx's
blocks return before :func:`adaptx.scale_by_learning_rate`).

Everything is computed in float64 on purpose. The tests compare adaptx's
float32 arithmetic against these numbers with a 1e-6 relative tolerance; a
float64 reference carries ~1e-16 error of its own, so the measured gap *is*
adaptx's float32 error. A float32 reference would only show that two float32
programs agree, and could hide an error both make.

The code is deliberately independent of adaptx: no shared helpers, one
class per algorithm, plain loops over leaves.
"""
import numpy as np


def as_float64(leaves):
    return [np.asarray(leaf, np.float64) for leaf in leaves]


def zeros_like(leaves, fill=0.0):
    return [np.full(np.shape(leaf), fill, np.float64) for leaf in leaves]


class Reference:
    """Counts steps and turns a direction into an update with the learning rate.

    ``learning_rate`` may be a number or a schedule ``step -> η`` read at the
    number of steps taken before this one (0 on the first), as adaptx does.
    """

    def __init__(self, learning_rate=1.0):
        self.learning_rate = learning_rate
        self.t = 0

    def step(self, grads, params=None):
        direction = self.direction(grads, params)
        rate = self.learning_rate
        rate = float(rate(self.t - 1)) if callable(rate) else rate
        return [-rate * d for d in direction]

    def direction(self, grads, params=None):
        self.t += 1
        return self._direction(as_float64(grads), None if params is None else as_float64(params))

    def _direction(self, grads, params):
        raise NotImplementedError


class Momentum(Reference):
    """Heavy ball (Polyak, 1964): m ← βm + g, d = m; Nesterov (Sutskever et al., 2013): d = g + βm."""

    def __init__(self, params, decay, nesterov=False, learning_rate=1.0):
        super().__init__(learning_rate)
        self.decay, self.nesterov = decay, nesterov
        self.m = zeros_like(params)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            self.m[i] = self.decay * self.m[i] + g
            out.append(g + self.decay * self.m[i] if self.nesterov else self.m[i])
        return out


class SGD(Reference):
    """θ ← θ − η·d with d = g, or the momentum direction when momentum > 0."""

    def __init__(self, params, learning_rate=1.0, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = Momentum(params, momentum, nesterov) if momentum > 0 else None

    def _direction(self, grads, params):
        return grads if self.momentum is None else self.momentum.direction(grads)


class Adagrad(Reference):
    """Duchi, Hazan & Singer (2011), diagonal: G ← G + g², d = g / (√G + ε) (or g / √(G + ε))."""

    def __init__(self, params, learning_rate=1.0, eps=1e-10, initial_accumulator=0.0, eps_in_sqrt=False):
        super().__init__(learning_rate)
        self.eps, self.eps_in_sqrt = eps, eps_in_sqrt
        self.G = zeros_like(params, initial_accumulator)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            self.G[i] = self.G[i] + g * g
            out.append(divide_by_root(g, self.G[i], self.eps, self.eps_in_sqrt))
        return out


def divide_by_root(g, v, eps, eps_in_sqrt):
    """g / (√v + ε), or g / √(v + ε)."""
    return g / np.sqrt(v + eps) if eps_in_sqrt else g / (np.sqrt(v) + eps)


class RMSProp(Reference):
    """Hinton (2012, lecture 6e); centered per Graves (2013); momentum on the scaled gradient as torch.

        v ← ρv + (1 − ρ)g²,   (centered: a ← ρa + (1 − ρ)g, v̄ = v − a²)
        s = g / (√v̄ + ε),     d = s, or the heavy-ball / Nesterov trace of s
    """

    def __init__(self, params, learning_rate=1.0, decay=0.9, eps=1e-8, eps_in_sqrt=False, centered=False,
                 momentum=0.0, nesterov=False, initial_accumulator=0.0):
        super().__init__(learning_rate)
        self.decay, self.eps, self.eps_in_sqrt, self.centered = decay, eps, eps_in_sqrt, centered
        self.v = zeros_like(params, initial_accumulator)
        self.a = zeros_like(params)
        self.momentum = Momentum(params, momentum, nesterov) if momentum > 0 else None

    def _direction(self, grads, params):
        rho, scaled = self.decay, []
        for i, g in enumerate(grads):
            self.v[i] = rho * self.v[i] + (1 - rho) * g * g
            variance = self.v[i]
            if self.centered:
                self.a[i] = rho * self.a[i] + (1 - rho) * g
                variance = self.v[i] - self.a[i] ** 2
            scaled.append(divide_by_root(g, variance, self.eps, self.eps_in_sqrt))
        return scaled if self.momentum is None else self.momentum.direction(scaled)


class Adam(Reference):
    """Kingma & Ba (2014), Algorithm 1; AMSGrad (Reddi et al., 2018) as torch.optim.Adam does it.

        m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
        AMSGrad: v_max ← max(v_max, v) on the raw v, then v_max replaces v below
        d = (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ) + ε_root) + ε)  (+ λθ: AdamW, Loshchilov & Hutter, 2019)
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
                 amsgrad=False, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
        self.amsgrad, self.weight_decay = amsgrad, weight_decay
        self.m, self.v, self.v_max = zeros_like(params), zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        b1, b2, t, out = self.b1, self.b2, self.t, []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            self.v_max[i] = np.maximum(self.v_max[i], self.v[i])
            v = self.v_max[i] if self.amsgrad else self.v[i]
            d = (self.m[i] / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t) + self.eps_root) + self.eps)
            out.append(d + self.weight_decay * params[i] if self.weight_decay else d)
        return out


class Adadelta(Reference):
    """Zeiler (2012), Algorithm 1, with torch's learning rate on top.

        E[g²] ← ρE[g²] + (1 − ρ)g²,   d = √(E[Δ²] + ε) / √(E[g²] + ε) · g,   E[Δ²] ← ρE[Δ²] + (1 − ρ)d²
    """

    def __init__(self, params, learning_rate=1.0, rho=0.9, eps=1e-6):
        super().__init__(learning_rate)
        self.rho, self.eps = rho, eps
        self.Eg2, self.Ed2 = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        rho, eps, out = self.rho, self.eps, []
        for i, g in enumerate(grads):
            self.Eg2[i] = rho * self.Eg2[i] + (1 - rho) * g * g
            d = np.sqrt(self.Ed2[i] + eps) / np.sqrt(self.Eg2[i] + eps) * g
            self.Ed2[i] = rho * self.Ed2[i] + (1 - rho) * d * d
            out.append(d)
        return out


class Adamax(Reference):
    """Kingma & Ba (2014), §7.1, with ε inside the max as torch.optim.Adamax.

        m ← β₁m + (1 − β₁)g,   u ← max(β₂u, |g| + ε),   d = m / ((1 − β₁ᵗ)·u)
    """

    def __init__(self, params, learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m, self.u = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.u[i] = np.maximum(self.b2 * self.u[i], np.abs(g) + self.eps)
            out.append(self.m[i] / ((1 - self.b1 ** self.t) * self.u[i]))
        return out


class NAdam(Reference):
    """Dozat (2016), Algorithm 2, with the warming schedule μₜ = β₁(1 − ½·0.96^(tψ)) as torch.optim.NAdam.

        m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
        d = (μₜ₊₁·m / (1 − ∏ᵢ≤ₜ₊₁ μᵢ) + (1 − μₜ)·g / (1 − ∏ᵢ≤ₜ μᵢ)) / (√(v / (1 − β₂ᵗ)) + ε)

    ``momentum_decay=None`` holds μₜ = β₁ (optax.nadam).
    """

    def __init__(self, params, learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=4e-3):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.psi = b1, b2, eps, momentum_decay
        self.m, self.v = zeros_like(params), zeros_like(params)
        self.mu_product = 1.0

    def mu(self, t):
        return self.b1 if self.psi is None else self.b1 * (1 - 0.5 * 0.96 ** (t * self.psi))

    def _direction(self, grads, params):
        t, b1, b2, out = self.t, self.b1, self.b2, []
        mu_t, mu_next = self.mu(t), self.mu(t + 1)
        self.mu_product *= mu_t
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_bar = (mu_next * self.m[i] / (1 - self.mu_product * mu_next)
                     + (1 - mu_t) * g / (1 - self.mu_product))
            out.append(m_bar / (np.sqrt(self.v[i] / (1 - b2 ** t)) + self.eps))
        return out


class EMA(Reference):
    """m ← βm + (1 − β)g, d = m: the first moment of Adam, without bias correction."""

    def __init__(self, params, decay):
        super().__init__()
        self.decay, self.m = decay, zeros_like(params)

    def _direction(self, grads, params):
        for i, g in enumerate(grads):
            self.m[i] = self.decay * self.m[i] + (1 - self.decay) * g
        return list(self.m)


class BiasCorrection(Reference):
    """d = g / (1 − βᵗ), t counted from 1 (Kingma & Ba, 2014, §3)."""

    def __init__(self, params, decay):
        super().__init__()
        self.decay = decay

    def _direction(self, grads, params):
        return [g / (1 - self.decay ** self.t) for g in grads]


class ClipByGlobalNorm(Reference):
    """d = g · min(1, c / ‖g‖₂), the norm taken over every leaf together (Pascanu et al., 2013)."""

    def __init__(self, params, max_norm):
        super().__init__()
        self.max_norm = max_norm

    def _direction(self, grads, params):
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        factor = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        return [g * factor for g in grads]


class DecayedWeights(Reference):
    """d = g + λθ (Loshchilov & Hutter, 2019)."""

    def __init__(self, params, weight_decay):
        super().__init__()
        self.weight_decay = weight_decay

    def _direction(self, grads, params):
        return [g + self.weight_decay * p for g, p in zip(grads, params)]


class Scale(Reference):
    """d = g: with a learning rate, the update −η·g of scale_by_learning_rate."""

    def __init__(self, params, learning_rate):
        super().__init__(learning_rate)

    def _direction(self, grads, params):
        return grads
