"""Published scaling laws: the loss they predict and the compute-optimal allocation they imply.

N is the parameter count, D training tokens, C training FLOPs. The published laws allocate under
C = 6ND (Kaplan et al. 2020 §2.1; Hoffmann et al. 2022 §3), the convention they were fitted with.
Losses are natural-log cross-entropy per token on the paper's own data and tokenizer: they compare
with each other only loosely and with a nextoken run not at all (fit your own with `nextoken fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nextoken.errors import NextokenError

PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day, Kaplan's unit of compute


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    @property
    def a(self) -> float:  # N_opt ∝ C^a
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:  # D_opt ∝ C^b
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def optimal(self, C: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimizing L under C = 6ND (Hoffmann et al. 2022, eq. 4)."""
        return self.G * (C / 6) ** self.a, (C / 6) ** self.b / self.G

    def to_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


@dataclass(frozen=True)
class PowerAllocation:
    """N_opt = kN * C^a, D_opt = C / (6 N_opt): an allocation rule without a loss model of its own
    (Chinchilla's approach 1, Kaplan's frontier). `loss_law` supplies the loss it prints."""

    name: str
    kN: float
    a: float
    loss_law: object
    source: str = ""

    @property
    def b(self) -> float:
        return 1 - self.a

    def optimal(self, C: float) -> tuple[float, float]:
        N = self.kN * C ** self.a
        return N, C / (6 * N)

    def loss(self, N, D):
        return self.loss_law.loss(N, D)


@dataclass(frozen=True)
class KaplanLoss:
    """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al. 2020, eq. 1.5),
    N counting non-embedding parameters; the one-variable limits are eqs. 1.1 and 1.2."""

    Nc: float = 8.8e13
    Dc: float = 5.4e13
    alpha_N: float = 0.076
    alpha_D: float = 0.095

    def loss(self, N, D):
        return np.power(np.power(self.Nc / N, self.alpha_N / self.alpha_D) + self.Dc / D, self.alpha_D)


# Chinchilla approach 3 with the constants of the paper's TeX source (ln E, ln A, ln B and the exponents
# to 7-8 digits). The rounded ones printed in the paper (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28)
# move the optimum noticeably (Besiroglu et al. 2024, §2), so they are not used.
CHINCHILLA = ParametricLaw("chinchilla", math.exp(0.5267228), math.exp(6.0073404), math.exp(6.0179186),
                           0.33917084, 0.2849083, "Hoffmann et al. 2022, approach 3 (eq. 2 and 4), unrounded")

# The refit of approach 3 on data reconstructed from Chinchilla's Figure 4 (Besiroglu et al. 2024, eq. 5).
EPOCH = ParametricLaw("epoch", 1.81686, 482.006, 2085.434, 0.34781, 0.36585,
                      "Besiroglu et al. 2024, replication of Chinchilla approach 3")

# Chinchilla Table 3 (approach 1 projections): parameters, FLOPs, tokens.
CHINCHILLA_TABLE3 = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


def _table3_allocation() -> PowerAllocation:
    # Least squares of log N on log C over the table's rows: a = 0.50 as in the paper's Table 2 (approach 1),
    # and about 20 tokens per parameter across the table.
    logC = np.log([r[1] for r in CHINCHILLA_TABLE3])
    logN = np.log([r[0] for r in CHINCHILLA_TABLE3])
    a, logk = np.polyfit(logC, logN, 1)
    return PowerAllocation("chinchilla-table3", float(math.exp(logk)), float(a), CHINCHILLA,
                           "Hoffmann et al. 2022, Table 3 (approach 1); loss from approach 3")


# Kaplan's compute-efficient frontier: N_opt = 1.3e9 * (C / PF-day)^0.73 (Kaplan et al. 2020, §6.1, Fig. 14).
KAPLAN = PowerAllocation("kaplan", 1.3e9 / PF_DAY ** 0.73, 0.73, KaplanLoss(),
                         "Kaplan et al. 2020, eq. 1.5 and the frontier of §6.1 (non-embedding N)")

LAWS = {law.name: law for law in (CHINCHILLA, EPOCH, _table3_allocation(), KAPLAN)}


def get_law(name: str):
    if name not in LAWS:
        raise NextokenError(f"unknown --law {name!r}; choose one of {', '.join(LAWS)} or pass --fit fit.json")
    return LAWS[name]
