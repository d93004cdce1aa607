"""Float64 NumPy references for the adaptive family, written from the papers' algorithm boxes.

Same conventions as ``reference``: independent of adaptx, one class per
algorithm, plain loops over leaves, ``direction`` returns d and ``step`` −η·d.
"""
import numpy as np

from reference import NAdam, Reference, zeros_like, Adamax


class RAdam(Reference):
    """Liu et al. (2020), Algorithm 2, with ρ_min = ``threshold`` (5 in the paper's code) and ε.

        m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²,   m̂ = m/(1 − β₁ᵗ)
        ρ∞ = 2/(1 − β₂) − 1,   ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ)
        ρₜ > ρ_min: d = rₜ·m̂/(√(v/(1 − β₂ᵗ) + ε_root) + ε),  rₜ = √((ρₜ−4)(ρₜ−2)ρ∞/((ρ∞−4)(ρ∞−2)ρₜ))
        else:       d = m̂
    ``nesterov``: m̂ = β₁m/(1 − β₁ᵗ⁺¹) + (1 − β₁)g/(1 − β₁ᵗ); ``torch``: ε added to √v before ÷√(1 − β₂ᵗ).
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0,
                 nesterov=False, torch=False, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root, self.threshold = b1, b2, eps, eps_root, threshold
        self.nesterov, self.torch, self.weight_decay = nesterov, torch, weight_decay
        self.m, self.v = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        b1, b2, t, out = self.b1, self.b2, self.t, []
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            if self.nesterov:
                m_hat = b1 * self.m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
            else:
                m_hat = self.m[i] / (1 - b1 ** t)
            if rho > self.threshold:
                r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                if self.torch:
                    d = r * m_hat * np.sqrt(1 - b2 ** t) / (np.sqrt(self.v[i]) + self.eps)
                else:
                    d = r * m_hat / (np.sqrt(self.v[i] / (1 - b2 ** t) + self.eps_root) + self.eps)
            else:
                d = m_hat
            out.append(d + self.weight_decay * params[i] if self.weight_decay else d)
        return out


class AdaBelief(Reference):
    """Zhuang et al. (2020), Algorithm 2 (ε inside s is ε_root, ε outside the root is ε).

        m ← β₁m + (1 − β₁)g,   s ← β₂s + (1 − β₂)(g − m)² + ε_root,   d = (m/(1 − β₁ᵗ)) / (√(s/(1 − β₂ᵗ)) + ε)
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root, self.nesterov = b1, b2, eps, eps_root, nesterov
        self.m, self.s = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        b1, b2, t, out = self.b1, self.b2, self.t, []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.s[i] = b2 * self.s[i] + (1 - b2) * (g - self.m[i]) ** 2 + self.eps_root
            if self.nesterov:
                m_hat = b1 * self.m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
            else:
                m_hat = self.m[i] / (1 - b1 ** t)
            out.append(m_hat / (np.sqrt(self.s[i] / (1 - b2 ** t)) + self.eps))
        return out


class Yogi(Reference):
    """Zaheer et al. (2018), Algorithm 2; m₀ = v₀ = ``initial_accumulator_value``; optional bias correction.

        m ← β₁m + (1 − β₁)g,   v ← v − (1 − β₂)·sign(v − g²)·g²,   d = m̂/(√(v̂ + ε_root) + ε)
    """

    def __init__(self, params, learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0,
                 initial_accumulator_value=1e-6, bias_correction=True):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root, self.bias = b1, b2, eps, eps_root, bias_correction
        self.m, self.v = zeros_like(params, initial_accumulator_value), zeros_like(params, initial_accumulator_value)

    def _direction(self, grads, params):
        b1, b2, t, out = self.b1, self.b2, self.t, []
        c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if self.bias else (1.0, 1.0)
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = self.v[i] - (1 - b2) * np.sign(self.v[i] - g * g) * g * g
            out.append((self.m[i] / c1) / (np.sqrt(self.v[i] / c2 + self.eps_root) + self.eps))
        return out


class Lion(Reference):
    """Chen et al. (2023), Algorithm 2: d = sign(β₁m + (1 − β₁)g) + λθ, then m ← β₂m + (1 − β₂)g."""

    def __init__(self, params, learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.weight_decay = b1, b2, weight_decay
        self.m = zeros_like(params)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            d = np.sign(self.b1 * self.m[i] + (1 - self.b1) * g)
            self.m[i] = self.b2 * self.m[i] + (1 - self.b2) * g
            out.append(d + self.weight_decay * params[i] if self.weight_decay else d)
        return out


class Lamb(Reference):
    """You et al. (2020), Algorithm 2 (φ = identity, ε added to √v̂ as optax):

        r = m̂/(√(v̂ + ε_root) + ε) + λθ,   d = (‖θ‖/‖r‖)·r per leaf (d = r when a norm is 0)
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root, self.weight_decay = b1, b2, eps, eps_root, weight_decay
        self.m, self.v = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        b1, b2, t, out = self.b1, self.b2, self.t, []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            r = (self.m[i] / (1 - b1 ** t)) / (np.sqrt(self.v[i] / (1 - b2 ** t) + self.eps_root) + self.eps)
            r = r + self.weight_decay * params[i]
            p_norm, r_norm = np.linalg.norm(params[i]), np.linalg.norm(r)
            out.append(r * (p_norm / r_norm) if p_norm > 0 and r_norm > 0 else r)
        return out


class NAdamW(NAdam):
    """NAdam's direction (``reference.NAdam``) + λθ (Loshchilov & Hutter, 2019)."""

    def __init__(self, params, learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
                 momentum_decay=4e-3):
        super().__init__(params, learning_rate, b1, b2, eps, momentum_decay)
        self.weight_decay = weight_decay

    def _direction(self, grads, params):
        return [d + self.weight_decay * p for d, p in zip(super()._direction(grads, params), params)]


class AdaMaxW(Adamax):
    """AdaMax's direction (``reference.Adamax``) + λθ."""

    def __init__(self, params, learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
        super().__init__(params, learning_rate, b1, b2, eps)
        self.weight_decay = weight_decay

    def _direction(self, grads, params):
        return [d + self.weight_decay * p for d, p in zip(super()._direction(grads, params), params)]


class Rprop(Reference):
    """Rprop without weight-backtracking (iRprop−, Igel & Hüsken, 2000), torch.optim.Rprop's rule.

        s = g·g_prev,   Δ ← clip(Δ·(η₊ if s > 0, η₋ if s < 0, else 1), Δmin, Δmax)
        g ← 0 where s < 0,   d = sign(g)·Δ,   g_prev ← g;   the step is −d (no learning rate on top)
    """

    def __init__(self, params, learning_rate=1e-2, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6,
                 max_step_size=50.0):
        super().__init__(1.0)
        self.eta_minus, self.eta_plus, self.min, self.max = eta_minus, eta_plus, min_step_size, max_step_size
        self.delta, self.prev = zeros_like(params, learning_rate), zeros_like(params)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            s = g * self.prev[i]
            factor = np.where(s > 0, self.eta_plus, np.where(s < 0, self.eta_minus, 1.0))
            self.delta[i] = np.clip(self.delta[i] * factor, self.min, self.max)
            g = np.where(s < 0, 0.0, g)
            self.prev[i] = g
            out.append(np.sign(g) * self.delta[i])
        return out


class NovoGrad(Reference):
    """Ginsburg et al. (2019), Algorithm 1 (ε_root inside the root as optax; 0 in the paper).

        v₁ = ‖g₁‖², v ← β₂v + (1 − β₂)‖g‖² per leaf;   m₁ = g₁/(√v₁ + ε) + λθ,  m ← β₁m + g/(√v + ε) + λθ;  d = m
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.eps_root, self.weight_decay = b1, b2, eps, eps_root, weight_decay
        self.m, self.v = zeros_like(params), [0.0 for _ in params]

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            square = float(np.sum(g * g))
            self.v[i] = square if self.t == 1 else self.b2 * self.v[i] + (1 - self.b2) * square
            term = g / (np.sqrt(self.v[i] + self.eps_root) + self.eps) + self.weight_decay * params[i]
            self.m[i] = term if self.t == 1 else self.b1 * self.m[i] + term
            out.append(self.m[i])
        return out


class Adan(Reference):
    """Xie et al. (2022), Algorithm 1, in decay-rate form (β = 1 − the paper's β), bias-corrected as its code.

        Δ = g − g_prev (0 at t = 1),  m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)Δ,  n ← β₃n + (1 − β₃)(g + cΔ)²
        d = (m̂ + c·v̂)/(√(n̂ + ε_root) + ε) + λθ,   c = β₂ (the paper's 1 − β₂)
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8,
                 weight_decay=0.0, diff_weight=None):
        super().__init__(learning_rate)
        self.b1, self.b2, self.b3, self.eps, self.eps_root = b1, b2, b3, eps, eps_root
        self.weight_decay, self.c = weight_decay, b2 if diff_weight is None else diff_weight
        self.m, self.v, self.n, self.prev = (zeros_like(params) for _ in range(4))

    def _direction(self, grads, params):
        b1, b2, b3, t, c, out = self.b1, self.b2, self.b3, self.t, self.c, []
        for i, g in enumerate(grads):
            diff = np.zeros_like(g) if t == 1 else g - self.prev[i]
            self.prev[i] = g
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * diff
            self.n[i] = b3 * self.n[i] + (1 - b3) * (g + c * diff) ** 2
            d = (self.m[i] / (1 - b1 ** t) + c * self.v[i] / (1 - b2 ** t)) / (
                np.sqrt(self.n[i] / (1 - b3 ** t) + self.eps_root) + self.eps)
            out.append(d + self.weight_decay * params[i])
        return out


class Adopt(Reference):
    """Taniguchi et al. (2024), Algorithm 2: v₀ = g₀² (no step), then
    m ← β₁m + (1 − β₁)·clip(g / max(√v, ε), k^¼),  d = m (nesterov: β₁m + (1 − β₁)·clip(...)),  v ← β₂v + (1 − β₂)g²
    with k the number of updates before this one.
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.9999, eps=1e-6, nesterov=False, use_clipping=True):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.nesterov, self.clipping = b1, b2, eps, nesterov, use_clipping
        self.m, self.v = zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        out = []
        for i, g in enumerate(grads):
            if self.t == 1:
                self.v[i] = g * g
                out.append(np.zeros_like(g))
                continue
            x = g / np.maximum(np.sqrt(self.v[i]), self.eps)
            if self.clipping:
                c = (self.t - 1) ** 0.25
                x = np.clip(x, -c, c)
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * x
            out.append(self.b1 * self.m[i] + (1 - self.b1) * x if self.nesterov else self.m[i].copy())
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
        return out


class AdEMAMix(Reference):
    """Pagliardini et al. (2024), Algorithm 1 (constant α and β₃):
    m₁ ← β₁m₁ + (1 − β₁)g,  m₂ ← β₃m₂ + (1 − β₃)g,  v ← β₂v + (1 − β₂)g²,
    d = (m₁/(1 − β₁ᵗ) + α·m₂) / (√(v/(1 − β₂ᵗ) + ε_root) + ε) + λθ
    """

    def __init__(self, params, learning_rate=1e-3, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8,
                 eps_root=0.0, weight_decay=0.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.b3, self.alpha, self.eps, self.eps_root = b1, b2, b3, alpha, eps, eps_root
        self.weight_decay = weight_decay
        self.m1, self.m2, self.v = zeros_like(params), zeros_like(params), zeros_like(params)

    def _direction(self, grads, params):
        b1, b2, b3, t, out = self.b1, self.b2, self.b3, self.t, []
        for i, g in enumerate(grads):
            self.m1[i] = b1 * self.m1[i] + (1 - b1) * g
            self.m2[i] = b3 * self.m2[i] + (1 - b3) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            d = (self.m1[i] / (1 - b1 ** t) + self.alpha * self.m2[i]) / (
                np.sqrt(self.v[i] / (1 - b2 ** t) + self.eps_root) + self.eps)
            out.append(d + self.weight_decay * params[i])
        return out


class ScheduleFreeAdamW(Reference):
    """Defazio et al. (2024), Algorithm 1 (AdamW), with v̂ = v/(1 − β₂ᵗ) under the root as optax does
    (the paper folds √(1 − β₂ᵗ) into γₜ). x and z are kept; y = (1 − β₁)z + β₁x are the params.

        γₜ = γ·min(1, t/T),  v ← β₂v + (1 − β₂)g²,  z ← z − γₜ(g/(√v̂ + ε) + λy)
        c = (maxᵢ≤ₜ γᵢ)^p / Σ (maxᵢ≤ⱼ γᵢ)^p,  x ← (1 − c)x + cz;   ``step`` returns y_new − y
    """

    def __init__(self, params, learning_rate=2.5e-3, warmup_steps=None, b1=0.9, b2=0.999, eps=1e-8,
                 weight_decay=0.0, weight_lr_power=2.0):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps, self.wd, self.power, self.warmup = b1, b2, eps, weight_decay, weight_lr_power, warmup_steps
        self.x, self.z = as_float(params), as_float(params)
        self.v = zeros_like(params)
        self.max_lr, self.weight_sum = 0.0, 0.0

    def step(self, grads, params=None):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        lr = self.learning_rate * (min(1.0, t / self.warmup) if self.warmup else 1.0)
        self.max_lr = max(self.max_lr, lr)
        weight = self.max_lr ** self.power
        self.weight_sum += weight
        c = weight / self.weight_sum if self.weight_sum > 0 else 0.0
        out = []
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            y = (1 - b1) * self.z[i] + b1 * self.x[i]
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            self.z[i] = self.z[i] - lr * (g / (np.sqrt(self.v[i] / (1 - b2 ** t)) + self.eps) + self.wd * y)
            self.x[i] = (1 - c) * self.x[i] + c * self.z[i]
            out.append((1 - b1) * self.z[i] + b1 * self.x[i] - y)
        return out


def as_float(leaves):
    return [np.array(leaf, np.float64) for leaf in leaves]


class Prodigy(Reference):
    """Mishchenko & Defazio (2024), Prodigy's algorithm box in its Adam version, γ = ``learning_rate``:

        m ← β₁m + (1 − β₁)·d·g,   v ← β₂v + (1 − β₂)·d²·g²
        r ← β₃r + (1 − β₃)·γd²·⟨g, x₀ − x⟩,   s ← β₃s + (1 − β₃)·γd²·g,   β₃ = √β₂
        d' = max(d, r / ‖s‖₁),   x ← x − γd·m / (√v + dε)

    with ⟨·,·⟩ and ‖·‖₁ over every leaf. The box's scaling is kept: (1 − β₃) in r and s and
    no division by d₀ (optax and adaptx drop the one and add the other; both cancel in r/‖s‖₁).
    The options are the implementations' additions, each off in the box:
    ``bias_correction`` replaces γ by γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ) in r, s and the step (optax);
    ``estim_lr_coef`` multiplies r/‖s‖₁; ``weight_decay`` λ adds −γd·c·λx (decoupled, the
    authors' code and optax); ``safeguard_warmup`` drops γ·c from s; ``eps_with_new_d`` puts
    d' in place of d beside ε (the authors' code and optax). Where ‖s‖₁ = 0, d stays.
    """

    def __init__(self, params, learning_rate=1.0, b1=0.9, b2=0.999, b3=None, eps=1e-8, estim_lr0=1e-6,
                 estim_lr_coef=1.0, weight_decay=0.0, safeguard_warmup=False, bias_correction=False,
                 eps_with_new_d=False):
        super().__init__(learning_rate)
        self.b1, self.b2, self.b3 = b1, b2, np.sqrt(b2) if b3 is None else b3
        self.eps, self.d, self.coef, self.weight_decay = eps, estim_lr0, estim_lr_coef, weight_decay
        self.safeguard, self.bias, self.new_d = safeguard_warmup, bias_correction, eps_with_new_d
        self.x0 = as_float(params)
        self.m, self.v, self.s = zeros_like(params), zeros_like(params), zeros_like(params)
        self.r = 0.0

    def step(self, grads, params=None):
        self.t += 1
        grads, params = as_float(grads), as_float(params)
        b1, b2, b3, t, d = self.b1, self.b2, self.b3, self.t, self.d
        c = np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if self.bias else 1.0
        gamma = self.learning_rate * c
        dot = sum(float(np.sum(g * (x0 - x))) for g, x0, x in zip(grads, self.x0, params))
        self.r = b3 * self.r + (1 - b3) * gamma * d * d * dot
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * d * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * d * d * g * g
            self.s[i] = b3 * self.s[i] + (1 - b3) * (d if self.safeguard else gamma * d) * d * g
        norm = sum(float(np.sum(np.abs(s))) for s in self.s)
        new_d = max(d, self.coef * self.r / norm) if norm > 0 else d
        self.d = new_d
        floor = (new_d if self.new_d else d) * self.eps
        return [-gamma * d * (m / (np.sqrt(v) + floor) + self.weight_decay * x)
                for m, v, x in zip(self.m, self.v, params)]
