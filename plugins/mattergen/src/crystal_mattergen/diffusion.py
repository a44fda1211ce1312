"""MatterGen's corruption processes and predictor-corrector sampler (Zeni et al., Nature 2025).

Written from the paper (Methods, "Diffusion process") and the conventions of the reference
implementation (``microsoft/mattergen``: ``common/diffusion/corruption.py``,
``diffusion/sampling/pc_sampler.py`` and the predictors/correctors it configures in
``sampling_conf/default.yaml``); no reference code is copied. A crystal is the triple
(fractional coordinates, lattice matrix, atom types), each corrupted independently:

* **lattice** ``L`` (B, 3, 3), rows are lattice vectors, Å: a variance-preserving SDE whose
  limit is a *symmetric* random lattice around a cubic cell of the training set's mean atomic
  density: ``dL = -β(t)/2 (L - μ(n)) dt + sqrt(β(t) v(n)) dW`` with ``β(t) = β0 + t (β1 - β0)``
  (0.1, 20), limit mean ``μ(n) = (n/ρ)^{1/3} I`` (``ρ`` = ``limit_density``, atoms/Å³) and
  limit variance ``v(n) = c n^{2/3}`` (``c`` = 0.25) per element; the noise is symmetrised
  (off-diagonal ``(z + zᵀ)/√2``, diagonal ``z``: unit variance everywhere).
* **fractional coordinates** ``x`` (N, 3): a variance-exploding SDE wrapped on the unit torus,
  ``σ(t) = σ_min (σ_max/σ_min)^t`` (0.01, 5), divided by ``n^{1/3}`` (the cell's atom count);
  scores are those of the wrapped normal (a truncated sum over periodic images).
* **atom types**: D3PM with an absorbing ("mask") state: 100 elements + the mask class
  (index 100, i.e. "atomic number" 101), ``N = 1000`` steps, schedule ``β_k = 1/(N - k)``
  (so ``q(x_k = x_0) = (N - k)/N``). The model predicts ``p(x_0 | x_t)`` as logits.

The denoiser returns, per field, what the reference calls the "model target":
``score × std`` for ``pos`` and ``cell`` (so ``score = out / std``) and logits for atom types.

Sampling (:class:`PredictorCorrector`): ``N`` time points ``linspace(1, eps_t, N)`` with
``eps_t = 1/N``; at each, one Langevin corrector step (positions: snr 0.4; lattice: snr 0.2 and
a polar decomposition onto the symmetric lattice afterwards; step sizes capped at 1e6) and
then a reverse-diffusion (ancestral) predictor step for all three fields. The returned crystal
is the predictor's noise-free mean at the last step, as the reference's generator does.

All random draws go through a :class:`Noise` object with named keys, so a test can feed the
reference's recorded noise (``tests/golden_steps``). Categorical draws use the Gumbel-max
trick (``argmax(logits + g)``), which draws exactly from ``softmax(logits)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

__all__ = [
    "MASK_INDEX",
    "NUM_CLASSES",
    "Corruption",
    "DiffusionConfig",
    "GeneratorNoise",
    "Guided",
    "LatticeVPSDE",
    "MaskDiffusion",
    "Noise",
    "PredictorCorrector",
    "ReplayNoise",
    "State",
    "WrappedVESDE",
    "polar_symmetric",
    "symmetric_noise",
    "to_discrete_time",
    "wrapped_normal_score",
]

#: atom types: Z = 1 … 100 at indices 0 … 99, the absorbing mask state at index 100
NUM_CLASSES = 101
MASK_INDEX = 100
#: MP-20 / Alex-MP-20 mean atomic density of the released models (atoms/Å³), reference data config
REFERENCE_AVERAGE_DENSITY = 0.05771451654022283


@dataclass(frozen=True)
class DiffusionConfig:
    """Hyper-parameters of the three corruption processes and the sampler (reference defaults)."""

    lattice_beta_min: float = 0.1
    lattice_beta_max: float = 20.0
    limit_density: float = REFERENCE_AVERAGE_DENSITY
    limit_var_scaling_constant: float = 0.25
    pos_sigma_min: float = 0.01
    pos_sigma_max: float = 5.0
    d3pm_steps: int = 1000
    # sampler (sampling_conf/default.yaml)
    snr_pos: float = 0.4
    snr_cell: float = 0.2
    max_step_size: float = 1e6
    n_steps_corrector: int = 1

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, float | int]) -> DiffusionConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------- state


@dataclass
class State:
    """A batch of (noisy) crystals: ``pos`` (N, 3) fractional, ``cell`` (B, 3, 3) Å (rows are
    lattice vectors), ``atomic_numbers`` (N,) 1-based (101 = mask), ``num_atoms`` (B,),
    ``batch`` (N,) crystal index of each atom."""

    pos: torch.Tensor
    cell: torch.Tensor
    atomic_numbers: torch.Tensor
    num_atoms: torch.Tensor
    batch: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.batch is None:
            self.batch = torch.repeat_interleave(
                torch.arange(len(self.num_atoms), device=self.num_atoms.device), self.num_atoms
            )

    def replace(self, **kw: torch.Tensor) -> State:
        return replace(self, **kw)


class Noise(Protocol):
    """Source of the random draws of the sampler, by name (see :class:`ReplayNoise`)."""

    def normal(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor: ...

    def gumbel(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor: ...


class GeneratorNoise:
    """Draws from a ``torch.Generator`` (seeded sampling)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def normal(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def gumbel(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(shape, generator=self.generator, device=like.device, dtype=like.dtype)
        tiny = torch.finfo(like.dtype).tiny
        e = -torch.log(u.clamp_min(tiny))  # standard exponential
        return -torch.log(e.clamp_min(tiny))


class ReplayNoise:
    """Returns given tensors by key (e.g. the noise recorded while the reference ran)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def _get(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        value = self.tensors[key]
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"replayed noise {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        return value.to(device=like.device, dtype=like.dtype)

    normal = _get
    gumbel = _get


def sample_categorical(logits: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """Gumbel-max: ``argmax(logits + g)`` with standard Gumbel ``g`` is a draw from ``softmax(logits)``."""
    return torch.argmax(logits + gumbel, dim=-1)


# ----------------------------------------------------------------------------- lattice


def symmetric_noise(z: torch.Tensor) -> torch.Tensor:
    """Symmetrise i.i.d. noise of shape (B, d, d) keeping unit variance: off-diagonal
    ``(z_ij + z_ji)/√2``, diagonal ``z_ii`` (reference convention; a (B, 1, 1) input broadcasts)."""
    eye = torch.eye(3, device=z.device, dtype=z.dtype)[None]
    return (1 / (2**0.5)) * (1 - eye) * (z + z.transpose(1, 2)) + eye * z


def polar_symmetric(lattice: torch.Tensor) -> torch.Tensor:
    """The symmetric lattice equivalent to ``lattice`` up to a rotation: ``W S Wᵀ`` for the SVD
    ``L = W S Vᵀ`` (the left factor of the polar decomposition ``L = (W S Wᵀ)(W Vᵀ)``)."""
    w, s, vt = torch.linalg.svd(lattice)
    v = vt.transpose(1, 2)
    u = w @ vt
    p = v @ torch.diag_embed(s) @ vt
    return u @ p @ u.transpose(1, 2)


class LatticeVPSDE:
    """VP-SDE of the lattice towards a cubic, density-scaled limit (see module docstring)."""

    T = 1.0

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        limit_density: float = REFERENCE_AVERAGE_DENSITY,
        limit_var_scaling_constant: float = 0.25,
    ) -> None:
        self.beta_0 = beta_min
        self.beta_1 = beta_max
        self.limit_density = limit_density
        self.limit_var_scaling_constant = limit_var_scaling_constant

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``α(t) = exp(-∫β/2) = exp(-t²(β1-β0)/4 - tβ0/2)``, shape of ``t``."""
        return torch.exp(-0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0)

    def limit_mean(self, num_atoms: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(n/ρ)^{1/3} I``, (B, 3, 3)."""
        eye = torch.eye(3, device=like.device, dtype=like.dtype).expand(len(num_atoms), 3, 3)
        return torch.pow(eye * num_atoms.to(like.device)[:, None, None] / self.limit_density, 1.0 / 3)

    def limit_var(self, num_atoms: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``c n^{2/3}`` per element, (B, 3, 3)."""
        n = num_atoms.to(like.device).reshape(-1, 1, 1).expand(-1, 3, 3)
        return torch.pow(n, 2.0 / 3).to(like.dtype) * self.limit_var_scaling_constant

    def std(self, t: torch.Tensor, num_atoms: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Marginal standard deviation, (B, 3, 3)."""
        a = self.mean_coeff(t)[:, None, None]
        return torch.sqrt((1.0 - a**2) * self.limit_var(num_atoms, like))

    def marginal(self, x0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.mean_coeff(t)[:, None, None]
        mean = a * x0 + (1 - a) * self.limit_mean(num_atoms, x0)
        return mean, torch.sqrt((1.0 - a**2) * self.limit_var(num_atoms, x0))

    def sample_marginal(
        self, x0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``x_t`` for i.i.d. standard normal ``z`` (B, 3, 3) (symmetrised here)."""
        mean, std = self.marginal(x0, t, num_atoms)
        return mean + std * symmetric_noise(z)

    def prior(self, num_atoms: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A draw of the limit distribution from i.i.d. normal ``z`` (B, 3, 3)."""
        zs = symmetric_noise(z)
        return zs * self.limit_var(num_atoms, zs).sqrt() + self.limit_mean(num_atoms, zs)


# ----------------------------------------------------------------------------- coordinates


def wrap(x: torch.Tensor, boundary: float = 1.0) -> torch.Tensor:
    return torch.remainder(x, boundary)


class WrappedVESDE:
    """Wrapped VE-SDE of fractional coordinates with std divided by ``n^{1/3}``."""

    T = 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 5.0, wrapping_boundary: float = 1.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.wrapping_boundary = wrapping_boundary

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def std(self, t: torch.Tensor, num_atoms: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Per-atom marginal std, (N, 1): ``σ(t) n^{-1/3}``."""
        scale = num_atoms ** (-1 / 3)
        return self.sigma(t)[:, None][batch] * scale[:, None][batch]

    def wrap(self, x: torch.Tensor) -> torch.Tensor:
        return wrap(x, self.wrapping_boundary)

    def sample_marginal(
        self, x0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor, batch: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        return self.wrap(x0 + self.std(t, num_atoms, batch) * z)

    def prior(self, num_atoms: torch.Tensor, batch: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale = (num_atoms ** (-1 / 3))[:, None][batch]
        return self.wrap(z * self.sigma_max * scale)


def wrapped_normal_score(
    x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, max_offset: int = 3
) -> torch.Tensor:
    """Score ∇ₓ log of the wrapped normal on the unit torus (isotropic ``variance`` (N,) per
    row), by a truncated sum over the ``(2k+1)³`` nearest images (``k = max_offset``)."""
    r = torch.arange(-max_offset, max_offset + 1, device=x.device, dtype=x.dtype)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    diff = (x - mean)[:, None, :] + offsets[None]
    weights = torch.softmax(-diff.pow(2).sum(-1) / (2 * variance[:, None]), dim=-1)
    return -(weights[:, :, None] * diff).sum(1) / variance[:, None]


# ----------------------------------------------------------------------------- atom types


def to_discrete_time(t: torch.Tensor, n: int, T: float = 1.0) -> torch.Tensor:
    """Continuous ``t`` ∈ [0, T] → integer step ``⌊t (n-1)/T⌋`` (reference convention)."""
    return ((t * (n - 1)) / T).long()


class MaskDiffusion:
    """Absorbing-state D3PM over :data:`NUM_CLASSES` classes with ``β_k = 1/(N - k)``."""

    def __init__(self, num_steps: int = 1000, dim: int = NUM_CLASSES) -> None:
        self.num_steps = num_steps
        self.dim = dim
        steps = torch.arange(num_steps)
        betas = torch.cat([torch.zeros(1), self.beta(steps)]).to(torch.float64)
        keep = torch.cumprod(1 - betas, dim=0)
        keep[-1] = 0.0
        #: probability of being unmasked after k steps, k = 0 … N
        self.keep = keep.float()

    def beta(self, k: torch.Tensor) -> torch.Tensor:
        return 1 / (self.num_steps - k)

    def qt_given_q0(self, q0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q(x_t | x_0)`` as probabilities for a distribution ``q0`` (M, dim) over x_0."""
        p = self.keep.to(q0.device)[t]
        out = torch.zeros_like(q0)
        out[:, :-1] = p[:, None] * q0[:, :-1]
        out[:, -1] = 1 - out[:, :-1].sum(-1)
        return torch.where(t[:, None] == 0, q0, out)

    def transition_to(
        self, x_next: torch.Tensor, t: torch.Tensor, like: torch.Tensor, t_next: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``q(x_{t'} = x_next | x_t = k)`` for every class ``k``, (M, dim) (rows need not sum to 1);
        ``t' = t + 1`` (``t_next`` None: the one-step ``β_t``) or ``t_next`` (masking probability
        ``1 - keep(t')/keep(t)``, for samplers with fewer than N time points)."""
        onehot = torch.eye(self.dim, device=like.device, dtype=like.dtype)[x_next]
        if t_next is None:
            beta = self.beta(t).to(like.dtype)
        else:
            keep = self.keep.to(like.device)
            beta = (1 - keep[t_next] / keep[t]).to(like.dtype)
        out = torch.zeros_like(onehot)
        out[:, :-1] = (1 - beta)[:, None] * onehot[:, :-1] + beta[:, None] * onehot[:, -1:]
        out[:, -1] = onehot[:, -1]
        return out

    def posterior_logits(
        self,
        x0_probs: torch.Tensor,
        t: torch.Tensor,
        x_next: torch.Tensor,
        eps: float = 1e-20,
        t_next: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised log ``q(x_t | x_{t'}, x_0)`` for ``x_0 ~ x0_probs`` (M, dim), zero-based
        ``x_next`` at step ``t' = t + 1`` (or ``t_next``)."""
        prob_t = self.qt_given_q0(x0_probs, t)
        return torch.log(prob_t + eps) + torch.log(self.transition_to(x_next, t, x0_probs, t_next) + eps)

    def marginal_logits(self, x0: torch.Tensor, t: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
        """log ``q(x_t | x_0)`` for zero-based classes ``x0`` (M,), steps ``t`` (M,) in 0 … N."""
        q0 = torch.eye(self.dim, device=x0.device)[x0]
        return torch.log(self.qt_given_q0(q0, t) + eps)


# ----------------------------------------------------------------------------- training


#: loss weights and D3PM hybrid coefficient of the reference (lightning_module/diffusion_module/default.yaml)
LOSS_WEIGHTS = {"cell": 1.0, "pos": 0.1, "atomic_numbers": 1.0}
D3PM_HYBRID_LAMBDA = 0.01


class Corruption:
    """The three forward processes together: corrupt a clean batch, and the training losses
    (reference ``MaterialsLoss``: per-crystal sums over atoms, means over crystals)."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = c = config or DiffusionConfig()
        self.lattice = LatticeVPSDE(
            c.lattice_beta_min, c.lattice_beta_max, c.limit_density, c.limit_var_scaling_constant
        )
        self.pos = WrappedVESDE(c.pos_sigma_min, c.pos_sigma_max)
        self.d3pm = MaskDiffusion(c.d3pm_steps)

    def sample_time(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training times in [1e-5, 1] (reference ``UniformTimestepSampler``)."""
        u = torch.rand(n, device=device, generator=generator)
        return 1e-5 + u * (1.0 - 1e-5)

    def corrupt(self, x0: State, t: torch.Tensor, noise: Noise) -> tuple[State, dict[str, torch.Tensor]]:
        """``x_t`` of every field, plus what the losses need (the lattice noise, the D3PM step)."""
        like = x0.pos
        zp = noise.normal("train.pos", tuple(x0.pos.shape), like)
        pos = self.pos.sample_marginal(x0.pos, t, x0.num_atoms, x0.batch, zp)
        zc = noise.normal("train.cell", tuple(x0.cell.shape), like)
        cell = self.lattice.sample_marginal(x0.cell, t, x0.num_atoms, zc)
        k = to_discrete_time(t, self.d3pm.num_steps)[x0.batch]
        logits = self.d3pm.marginal_logits(x0.atomic_numbers - 1, k + 1)
        g = noise.gumbel("train.atomic_numbers", tuple(logits.shape), logits)
        types = sample_categorical(logits, g) + 1
        return x0.replace(pos=pos, cell=cell, atomic_numbers=types), {"cell_noise": symmetric_noise(zc), "k": k}

    def losses(
        self, x0: State, noisy: State, t: torch.Tensor, out: Mapping[str, torch.Tensor], aux: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        b = len(x0.num_atoms)
        per = {}
        # positions: wrapped-normal score × std
        std = self.pos.std(t, x0.num_atoms, x0.batch)
        target = wrapped_normal_score(noisy.pos, x0.pos, std.squeeze(-1) ** 2) * std
        row = (target - out["pos"]).square().mean(1)
        per["pos"] = torch.zeros(b, dtype=row.dtype, device=row.device).index_add_(0, x0.batch, row)
        # lattice: predict -z
        per["cell"] = (out["cell"] + aux["cell_noise"]).square().reshape(b, -1).mean(1)
        # atom types: KL of the posteriors (CE at k = 0) + λ CE on x_0
        k = aux["k"]
        x_start = x0.atomic_numbers - 1
        x_next = noisy.atomic_numbers - 1
        logits = out["atomic_numbers"]
        onehot = torch.eye(self.d3pm.dim, device=logits.device, dtype=logits.dtype)[x_start]
        q_logits = self.d3pm.posterior_logits(onehot, k, x_next)
        p_logits = self.d3pm.posterior_logits(torch.softmax(logits, dim=-1), k, x_next)
        q_logp = torch.log_softmax(q_logits, -1)
        p_logp = torch.log_softmax(p_logits, -1)
        kl = (q_logp.exp() * (q_logp - p_logp)).sum(-1)
        ce_t = torch.nn.functional.cross_entropy(p_logits, x_start, reduction="none")
        ce_0 = torch.nn.functional.cross_entropy(logits, x_start, reduction="none")
        row = torch.where(k == 0, ce_t, kl) + D3PM_HYBRID_LAMBDA * ce_0
        per["atomic_numbers"] = torch.zeros(b, dtype=row.dtype, device=row.device).index_add_(0, x0.batch, row)
        total = sum(LOSS_WEIGHTS[key] * v for key, v in per.items())
        return {"loss": total.mean(), **{f"loss_{key}": v.mean() for key, v in per.items()}}


# ----------------------------------------------------------------------------- sampler


@dataclass
class Guided:
    """Unconditional and conditional raw outputs of one score call, mixed after conversion to
    scores with guidance factor ``factor`` (see :mod:`crystal_mattergen.sampler`)."""

    unconditional: dict[str, torch.Tensor]
    conditional: dict[str, torch.Tensor]
    factor: float


#: raw denoiser outputs: {"pos": (N, 3) score·std, "cell": (B, 3, 3) score·std, "atomic_numbers": (N, 101) logits}
#: or a :class:`Guided` pair of them
ScoreFn = Callable[[State, torch.Tensor], "dict[str, torch.Tensor] | Guided"]


class PredictorCorrector:
    """Reverse-diffusion predictor + Langevin corrector sampler (reference defaults).

    ``score_model(state, t)`` returns the raw outputs (model targets) of each field; guidance
    (:mod:`crystal_mattergen.sampler`) mixes them before they reach this class.
    """

    def __init__(self, config: DiffusionConfig | None = None, *, steps: int | None = None, corrector: bool = True):
        self.config = c = config or DiffusionConfig()
        self.corruption = Corruption(c)
        self.lattice = self.corruption.lattice
        self.pos = self.corruption.pos
        self.d3pm = self.corruption.d3pm
        #: number of time points; the D3PM transition matrices assume N = d3pm_steps (as the reference asserts)
        self.N = int(steps or c.d3pm_steps)
        self.eps_t = 1.0 / self.N
        self.max_t = 1.0
        self.corrector = corrector

    # ---------------------------------------------------------------- schedule
    def time_grid(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``N`` decreasing time points (float32, as the reference) and the (negative) step ``dt``."""
        timesteps = torch.linspace(self.max_t, self.eps_t, self.N, device=device)
        dt = -torch.tensor((self.max_t - self.eps_t) / (self.N - 1) if self.N > 1 else self.max_t).to(device)
        return timesteps, dt

    # ---------------------------------------------------------------- prior
    def prior(self, num_atoms: torch.Tensor, noise: Noise, dtype: torch.dtype = torch.float32) -> State:
        device = num_atoms.device
        batch = torch.repeat_interleave(torch.arange(len(num_atoms), device=device), num_atoms)
        like = torch.empty(0, dtype=dtype, device=device)
        n = int(num_atoms.sum())
        pos = self.pos.prior(num_atoms, batch, noise.normal("prior.pos", (n, 3), like))
        cell = self.lattice.prior(num_atoms, noise.normal("prior.cell", (len(num_atoms), 3, 3), like))
        types = torch.full((n,), MASK_INDEX + 1, dtype=torch.long, device=device)
        return State(pos.to(dtype), cell.to(dtype), types, num_atoms, batch)

    # ---------------------------------------------------------------- scores
    def scores(
        self, state: State, t: torch.Tensor, out: Mapping[str, torch.Tensor] | Guided
    ) -> dict[str, torch.Tensor]:
        """Model targets → scores (``out / std``; logits unchanged); a :class:`Guided` pair is
        converted branch by branch and mixed as ``torch.lerp(uncond, cond, γ)`` (the reference's order)."""
        if isinstance(out, Guided):
            u = self.scores(state, t, out.unconditional)
            c = self.scores(state, t, out.conditional)
            return {k: torch.lerp(u[k], c[k], out.factor) for k in u}
        pos_std = self.pos.std(t, state.num_atoms, state.batch)
        cell_std = self.lattice.std(t, state.num_atoms, state.cell)
        return {
            "pos": out["pos"] / pos_std,
            "cell": out["cell"] / cell_std,
            "atomic_numbers": out["atomic_numbers"],
        }

    # ---------------------------------------------------------------- corrector
    def _langevin_step_size(
        self, score_norm: torch.Tensor, noise_norm: torch.Tensor, snr: float, alpha: torch.Tensor
    ) -> torch.Tensor:
        grad_norm = score_norm.mean()
        noise_norm = noise_norm.mean()
        step = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        cap = torch.tensor(self.config.max_step_size, dtype=step.dtype, device=step.device)
        step = torch.minimum(step, cap)
        if bool(grad_norm == 0):
            step = torch.full_like(step, self.config.max_step_size)
        return step

    def correct(
        self,
        state: State,
        t: torch.Tensor,
        dt: torch.Tensor,
        score: Mapping[str, torch.Tensor],
        noise: Noise,
        tag: str = "corrector",
    ) -> tuple[State, State]:
        """One Langevin step on positions and lattice; returns (sample, mean)."""
        # positions: per-crystal norms, averaged over crystals; alpha = 1 for a VE-SDE
        s = score["pos"]
        z = noise.normal(f"{tag}.pos", tuple(s.shape), s)
        b = len(state.num_atoms)
        s_norm = torch.zeros(b, dtype=s.dtype, device=s.device).index_add_(0, state.batch, s.square().sum(1)).sqrt()
        z_norm = torch.zeros(b, dtype=s.dtype, device=s.device).index_add_(0, state.batch, z.square().sum(1)).sqrt()
        step = self._langevin_step_size(s_norm, z_norm, self.config.snr_pos, torch.ones_like(t))[:, None][state.batch]
        pos_mean = state.pos + step * s
        pos = pos_mean + torch.sqrt(step * 2) * z
        # lattice: symmetric noise, alpha = ᾱ(t)/ᾱ(t+dt), then back onto the symmetric lattice
        c = score["cell"]
        zc = symmetric_noise(noise.normal(f"{tag}.cell", tuple(c.shape), c))
        alpha = self.lattice.mean_coeff(t) ** 2 / self.lattice.mean_coeff(t + dt) ** 2
        c_norm = c.square().reshape(b, -1).sum(1).sqrt()
        zc_norm = zc.square().reshape(b, -1).sum(1).sqrt()
        step_c = self._langevin_step_size(c_norm, zc_norm, self.config.snr_cell, alpha)[:, None, None]
        cell_mean = state.cell + step_c * c
        cell = cell_mean + torch.sqrt(step_c * 2) * zc
        sample = state.replace(pos=self.pos.wrap(pos), cell=polar_symmetric(cell))
        mean = state.replace(pos=self.pos.wrap(pos_mean), cell=polar_symmetric(cell_mean))
        return sample, mean

    # ---------------------------------------------------------------- predictor
    @staticmethod
    def _ancestral_coeffs(
        alpha_t: torch.Tensor,
        sigma_t: torch.Tensor,
        alpha_s: torch.Tensor,
        sigma_s: torch.Tensor,
        at_zero: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_{s} mean = x_coeff·x_t + score_coeff·score, std, for s = t + dt < t (DDPM posterior)."""
        sigma_s = torch.where(at_zero, torch.zeros_like(sigma_s), sigma_s)
        sigma2 = sigma_t**2 - sigma_s**2 * alpha_t**2 / alpha_s**2
        std = torch.sqrt(sigma2) * sigma_s / sigma_t
        a_ts = torch.clip(alpha_t / alpha_s, 0.001, 1) if bool((alpha_t / alpha_s < 0.001).any()) else alpha_t / alpha_s
        std = torch.where(at_zero, torch.zeros_like(std), std)
        return 1.0 / a_ts, sigma2 / a_ts, std

    def predict(
        self, state: State, t: torch.Tensor, dt: torch.Tensor, score: Mapping[str, torch.Tensor], noise: Noise
    ) -> tuple[State, State]:
        """One reverse-diffusion step of all three fields; returns (sample, mean)."""
        s_t = t + dt
        nb = state.num_atoms
        # positions (VE: α = 1)
        sp = score["pos"]
        sig_t = self.pos.std(t, nb, state.batch).expand_as(sp)
        sig_s = self.pos.std(s_t, nb, state.batch).expand_as(sp)
        ones = torch.ones_like(sp)
        zero_atoms = (s_t[state.batch] <= 0)[:, None].expand_as(sp)
        xc, sc, std = self._ancestral_coeffs(ones, sig_t, ones, sig_s, zero_atoms)
        zp = noise.normal("predictor.pos", tuple(sp.shape), sp)
        pos_mean = xc * state.pos + sc * sp
        pos = pos_mean + std * zp
        # lattice (VP towards the limit mean); the reference draws ONE normal per crystal here
        # (noise shaped like the (B, 1, 1) coefficient, then symmetrised) — kept for parity
        scl = score["cell"]
        a_t = self.lattice.mean_coeff(t)[:, None, None]
        a_s = self.lattice.mean_coeff(s_t)[:, None, None]
        lsig_t = self.lattice.std(t, nb, scl)
        lsig_s = self.lattice.std(s_t, nb, scl)
        zero_cells = (s_t <= 0)[:, None, None]
        xc, sc, std = self._ancestral_coeffs(a_t, lsig_t, a_s, lsig_s, zero_cells.expand_as(lsig_s))
        zl = symmetric_noise(noise.normal("predictor.cell", (len(nb), 1, 1), scl))
        cell_mean = xc * state.cell + sc * scl + (1 - xc) * self.lattice.limit_mean(nb, scl)
        cell = cell_mean + std * zl
        # atom types: x_0 probabilities → posterior q(x_{t-1} | x_t, x_0) → categorical draw
        logits = score["atomic_numbers"]
        probs = torch.softmax(logits, dim=-1)
        if self.d3pm.num_steps == self.N:  # the reference: x is x_{k+1}, draw x_k, k = ⌊t (N-1)⌋
            k = to_discrete_time(t, self.d3pm.num_steps)[state.batch]
            post = self.d3pm.posterior_logits(probs, k, state.atomic_numbers - 1)
        else:  # fewer time points: jump from level ⌊t (N-1)⌋ + 1 to the level of t + dt (0 at the end)
            k_now = to_discrete_time(t, self.d3pm.num_steps) + 1
            k_to = torch.where(s_t > 0.5 * self.eps_t, to_discrete_time(s_t.clamp_min(0), self.d3pm.num_steps) + 1, 0)
            k_to = torch.minimum(k_to, k_now - 1)
            post = self.d3pm.posterior_logits(
                probs, k_to[state.batch], state.atomic_numbers - 1, t_next=k_now[state.batch]
            )
        g = noise.gumbel("predictor.atomic_numbers", tuple(post.shape), post)
        types = sample_categorical(post, g) + 1
        types_mean = torch.argmax(torch.softmax(post.to(probs.dtype), dim=-1), dim=-1) + 1
        sample = state.replace(pos=self.pos.wrap(pos), cell=cell, atomic_numbers=types)
        mean = state.replace(pos=self.pos.wrap(pos_mean), cell=cell_mean, atomic_numbers=types_mean)
        return sample, mean

    # ---------------------------------------------------------------- loop
    def step(
        self, state: State, t: torch.Tensor, dt: torch.Tensor, score_model: ScoreFn, noise: Noise
    ) -> tuple[State, State]:
        """One time point: corrector step(s) then the predictor; returns (sample, mean)."""
        if self.corrector:
            for _ in range(self.config.n_steps_corrector):
                sc = self.scores(state, t, score_model(state, t))
                state, _ = self.correct(state, t, dt, sc, noise)
        sp = self.scores(state, t, score_model(state, t))
        return self.predict(state, t, dt, sp, noise)

    @torch.no_grad()
    def sample(
        self,
        num_atoms: torch.Tensor,
        score_model: ScoreFn,
        noise: Noise,
        *,
        dtype: torch.dtype = torch.float32,
        callback: Callable[[int, State], None] | None = None,
    ) -> State:
        """Denoise from the prior; returns the last predictor mean (the reference's output)."""
        state = self.prior(num_atoms, noise, dtype)
        timesteps, dt = self.time_grid(num_atoms.device)
        mean = state
        for i in range(self.N):
            t = torch.full((len(num_atoms),), float(timesteps[i]), device=num_atoms.device, dtype=timesteps.dtype)
            state, mean = self.step(state, t, dt, score_model, noise)
            if callback is not None:
                callback(i, state)
        return mean
