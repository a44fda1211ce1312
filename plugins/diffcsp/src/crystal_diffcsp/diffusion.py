"""DiffCSP: joint diffusion of the lattice (DDPM) and fractional coordinates (score matching with
a wrapped normal on the torus), plus the one-hot atom types for ab initio generation.

Jiao, Huang, Lin, Han, Lin, Liu, Wang & Cheng, "Crystal Structure Prediction by Joint Equivariant
Diffusion", NeurIPS 2023. Notation (lattice vectors as rows, shapes for B crystals, N atoms):

* lattice  ``L_t = √ᾱ_t L_0 + √(1 − ᾱ_t) ε_L``, loss ``‖ε_L − ε̂_L‖²``                     (B, 3, 3)
* coords   ``F_t = w(F_0 + σ_t ε_F)``, loss ``‖∇ log q(F_t|F_0)/√E[(∇log q)²] − ε̂_F‖²``   (N, 3)
* types    (ab initio) ``A_t = √ᾱ_t onehot(A_0) + √(1 − ᾱ_t) ε_A``, loss ``‖ε_A − ε̂_A‖²``  (N, 100)

``loss = cost_lattice·loss_lattice + cost_coord·loss_coord (+ cost_type·loss_type)``, each a mean
squared error over all entries (as the reference code), ``t ~ U{1 … T}`` per crystal.

Sampling is the paper's Algorithm 2 (predictor–corrector, Song et al. 2021): per step a Langevin
corrector on the coordinates (step ``γ = step_lr·(σ_t/σ_1)²``), then the predictor: ancestral
DDPM step for the lattice (and types) and the reverse wrapped-normal step for the coordinates.
The network's coordinate output is the score scaled by ``1/√E[(∇log q)²]``; the reference code
trains on the negated score and subtracts it in its updates, which is the same thing.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from crystal.config import StrictModel
from crystal_diffcsp.cspnet import MAX_ATOMIC_NUMBER, CSPNet
from crystal_diffcsp.embeddings import SinusoidalTimeEmbedding
from crystal_diffcsp.graph import fully_connected_edges
from crystal_diffcsp.schedules import BetaSchedule, SigmaSchedule
from crystal_diffcsp.wrapped_normal import wrapped_normal_score

__all__ = ["DiffCSP", "DiffCSPModelConfig", "SampleResult"]

#: largest number of atoms per crystal the atom-count distribution records
MAX_ATOMS = 100


class DiffCSPModelConfig(StrictModel):
    """Architecture and diffusion hyper-parameters (saved with the weights). Defaults = the paper's."""

    mode: Literal["csp", "ab_initio"] = Field(
        "csp", description="'csp': composition given, lattice + coordinates diffused; 'ab_initio': atom types too"
    )
    hidden_dim: int = Field(512, ge=8, description="CSPNet width H (reference: 512)")
    num_layers: int = Field(6, ge=1, description="CSPNet message-passing layers (reference: 6)")
    num_freqs: int = Field(128, ge=1, description="Fourier frequencies K of fractional differences (reference: 128)")
    time_dim: int = Field(256, ge=4, description="sinusoidal time-embedding width (reference: 256)")
    layer_norm: bool = Field(True, description="pre-LayerNorm in each layer and after the last (reference: true)")
    timesteps: int = Field(1000, ge=2, description="diffusion steps T (reference: 1000)")
    beta_schedule: Literal["cosine", "linear"] = Field("cosine", description="lattice/type DDPM β schedule")
    sigma_begin: float = Field(0.005, gt=0, description="σ_1 of the wrapped normal (fractional units)")
    sigma_end: float = Field(0.5, gt=0, description="σ_T of the wrapped normal (fractional units)")
    cost_lattice: float = Field(1.0, ge=0, description="weight of the lattice loss")
    cost_coord: float = Field(1.0, ge=0, description="weight of the coordinate loss")
    cost_type: float = Field(20.0, ge=0, description="weight of the type loss (ab initio only; reference: 20)")
    step_lr: float = Field(
        5e-7, gt=0, description="recommended Langevin corrector step (reference: 5e-7 for Perov-5/Carbon-24 CSP)"
    )
    elements: tuple[int, ...] = Field((), description="atomic numbers seen in training (filled by training)")


class SampleResult:
    """Sampled ``frac_coords`` (N, 3) in [0, 1), ``lattices`` (B, 3, 3) Å, ``atomic_numbers`` (N,)."""

    def __init__(self, frac_coords: torch.Tensor, lattices: torch.Tensor, atomic_numbers: torch.Tensor) -> None:
        self.frac_coords = frac_coords
        self.lattices = lattices
        self.atomic_numbers = atomic_numbers


class DiffCSP(nn.Module):
    """The denoiser, its schedules, the atom-count distribution, the loss and the sampler."""

    num_atoms_counts: torch.Tensor

    def __init__(self, config: DiffCSPModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffCSPModelConfig()
        c = self.config
        ab_initio = c.mode == "ab_initio"
        self.net = CSPNet(
            hidden_dim=c.hidden_dim,
            num_layers=c.num_layers,
            num_freqs=c.num_freqs,
            time_dim=c.time_dim,
            layer_norm=c.layer_norm,
            type_input="continuous" if ab_initio else "embedding",
            predict_types=ab_initio,
        )
        self.time_embedding = SinusoidalTimeEmbedding(c.time_dim)
        self.beta = BetaSchedule(c.timesteps, c.beta_schedule)
        self.sigma = SigmaSchedule(c.timesteps, c.sigma_begin, c.sigma_end)
        #: histogram of atoms per training crystal (index = atom count), sampled in ab initio mode
        self.register_buffer("num_atoms_counts", torch.zeros(MAX_ATOMS + 1, dtype=torch.long))

    # ---------------------------------------------------------------- data statistics
    def record_training_set(self, num_atoms: torch.Tensor) -> None:
        """Store the atom-count histogram of the training crystals."""
        if int(num_atoms.max()) > MAX_ATOMS:
            raise ValueError(f"diffcsp: crystals with more than {MAX_ATOMS} atoms are not supported")
        self.num_atoms_counts.zero_()
        self.num_atoms_counts += torch.bincount(num_atoms.cpu(), minlength=MAX_ATOMS + 1).to(self.num_atoms_counts)

    # ---------------------------------------------------------------- training
    def training_loss(self, batch) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        """Denoising losses of a :class:`~crystal.batch.CrystalBatch` (canonical frame, float32).

        Returns ``loss``, ``loss_lattice``, ``loss_coord`` (and ``loss_type`` ab initio), scalars.
        In eval mode the times and noises come from a generator seeded with 0 (deterministic
        validation); in train mode from torch's global generator.
        """
        c = self.config
        b = len(batch)
        dev = batch.lattices.device
        # evaluation mode draws from a fixed seed, so validation losses are comparable across epochs
        gen = None if self.training else torch.Generator(dev).manual_seed(0)
        t = torch.randint(1, c.timesteps + 1, (b,), device=dev, generator=gen)
        abar = self.beta.alphas_cumprod[t]
        c0, c1 = abar.sqrt(), (1 - abar).sqrt()
        sig = self.sigma.sigmas[t][batch.batch].unsqueeze(-1)
        norm = self.sigma.sigmas_norm[t][batch.batch].unsqueeze(-1)
        lat0, frac0 = batch.lattices, batch.frac_coords
        eps_l = torch.randn(lat0.shape, dtype=lat0.dtype, device=dev, generator=gen)
        eps_f = torch.randn(frac0.shape, dtype=frac0.dtype, device=dev, generator=gen)
        lat_t = c0[:, None, None] * lat0 + c1[:, None, None] * eps_l
        frac_t = torch.remainder(frac0 + sig * eps_f, 1.0)
        target_f = wrapped_normal_score(sig * eps_f, sig) / norm.sqrt()
        if c.mode == "ab_initio":
            onehot = F.one_hot(batch.atomic_numbers - 1, MAX_ATOMIC_NUMBER).to(lat0.dtype)
            eps_a = torch.randn(onehot.shape, dtype=onehot.dtype, device=dev, generator=gen)
            types_in = c0[batch.batch, None] * onehot + c1[batch.batch, None] * eps_a
        else:
            types_in = batch.atomic_numbers
        pred_l, pred_f, pred_a = self.net(
            self.time_embedding(t).to(lat0.dtype), types_in, frac_t, lat_t, batch.num_atoms, batch.batch
        )
        loss_lattice = F.mse_loss(pred_l, eps_l)
        loss_coord = F.mse_loss(pred_f, target_f)
        loss = c.cost_lattice * loss_lattice + c.cost_coord * loss_coord
        out = {"loss_lattice": loss_lattice, "loss_coord": loss_coord}
        if pred_a is not None:
            loss_type = F.mse_loss(pred_a, eps_a)
            loss = loss + c.cost_type * loss_type
            out["loss_type"] = loss_type
        out["loss"] = loss
        return out

    # ---------------------------------------------------------------- sampling
    def time_grid(self, steps: int | None) -> list[int]:
        """Decreasing times ``τ_1 = T > … > τ_K = 1`` visited by the sampler (all T when ``steps`` is None).

        With ``steps < T`` the times are spaced evenly in the log signal-to-noise ratio
        ``log(ᾱ_t / (1 − ᾱ_t))`` of the lattice schedule (rounded to integers, refined until there
        are ``steps`` distinct ones). Evenly spaced *t* fails: the cosine schedule's ᾱ falls by
        orders of magnitude over its last steps, so one coarse first step amplifies the error of
        ε̂_L by √(ᾱ_s / ᾱ_t) and the lattice explodes.
        """
        T = self.config.timesteps
        if steps is None or steps >= T:
            return list(range(T, 0, -1))
        abar = self.beta.alphas_cumprod.to(torch.float64)[1:].cpu()
        log_snr = torch.log(abar / (1 - abar))  # (T,) decreasing in t
        ascending = torch.flip(log_snr, [0])
        n = int(steps)
        while True:
            targets = torch.linspace(float(log_snr[-1]), float(log_snr[0]), n, dtype=torch.float64)
            pos = torch.searchsorted(ascending, targets).clamp(1, T - 1)
            nearer = torch.where((targets - ascending[pos - 1]).abs() <= (ascending[pos] - targets).abs(), pos - 1, pos)
            times = {T - int(i) for i in nearer.tolist()} | {T, 1}
            if len(times) >= steps or n >= 4 * T:
                break
            n += max(1, steps - len(times))
        for t in torch.linspace(T, 1, T, dtype=torch.float64).round().long().tolist():  # top up if rounding merged
            if len(times) >= steps:
                break
            times.add(int(t))
        ordered = sorted(times, reverse=True)
        keep = torch.linspace(0, len(ordered) - 1, int(steps), dtype=torch.float64).round().long().tolist()
        return [ordered[i] for i in keep]

    def sample_num_atoms(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """(count,) atom counts drawn from the training histogram."""
        w = self.num_atoms_counts.to(torch.float64).cpu()
        if float(w.sum()) <= 0:
            raise ValueError("diffcsp: these weights carry no atom-count distribution (trained without one)")
        return torch.multinomial(w, count, replacement=True, generator=generator)

    @torch.no_grad()
    def reverse_step(
        self,
        t: int,
        s: int,
        types: torch.Tensor,
        frac: torch.Tensor,
        lat: torch.Tensor,
        num_atoms: torch.Tensor,
        batch: torch.Tensor,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        step_lr: float,
        noise_corrector: torch.Tensor | None,
        noise_f: torch.Tensor,
        noise_l: torch.Tensor,
        noise_a: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One predictor–corrector step from time ``t`` to ``s < t`` with the given noises.

        ``types`` (N,) atomic numbers (csp) or (N, 100) noisy one-hot (ab initio), ``frac`` (N, 3),
        ``lat`` (B, 3, 3) Å. ``noise_corrector`` (N, 3) drives the Langevin corrector on the
        coordinates (``None``: no corrector); ``noise_f`` (N, 3), ``noise_l`` (B, 3, 3) and, ab
        initio, ``noise_a`` (N, 100) the predictor (zeros on the last step, as the reference).
        Returns the new ``(frac, lat, types)``; ``frac`` wrapped to [0, 1). With ``s = t − 1`` the
        coefficients are the schedule's own (``α_t``, posterior std ``σ_t``), exactly as the
        reference sampler; otherwise the DDPM posterior between ``t`` and ``s`` (respacing).
        """
        c = self.config
        dtype = lat.dtype
        b = int(num_atoms.shape[0])
        if s == t - 1:
            alpha = self.beta.alphas.to(torch.float64)[t]
            abar_t = self.beta.alphas_cumprod.to(torch.float64)[t]
            post_std = float(self.beta.sigmas[t])
        else:
            abar_all = self.beta.alphas_cumprod.to(torch.float64)
            abar_t, abar_s = abar_all[t], abar_all[s]
            alpha = abar_t / abar_s
            post_std = float(((1 - alpha) * (1 - abar_s) / (1 - abar_t)).sqrt())
        c0 = float(1 / alpha.sqrt())
        c1 = float((1 - alpha) / (1 - abar_t).sqrt())
        sig_t, sig_s = float(self.sigma.sigmas[t]), float(self.sigma.sigmas[s])
        score_scale = float(self.sigma.sigmas_norm[t].to(torch.float64).sqrt())
        temb = self.time_embedding(torch.full((b,), t, device=lat.device)).to(dtype)

        if noise_corrector is not None:  # Langevin corrector on the coordinates
            _, pred_f, _ = self.net(temb, types, frac, lat, num_atoms, batch, edges)
            gamma = step_lr * (sig_t / c.sigma_begin) ** 2
            frac = torch.remainder(frac + gamma * pred_f * score_scale + (2 * gamma) ** 0.5 * noise_corrector, 1.0)

        # predictor
        pred_l, pred_f, pred_a = self.net(temb, types, frac, lat, num_atoms, batch, edges)
        step = sig_t**2 - sig_s**2
        std_f = (sig_s**2 * step / sig_t**2) ** 0.5
        frac = torch.remainder(frac + step * pred_f * score_scale + std_f * noise_f, 1.0)
        lat = c0 * (lat - c1 * pred_l) + post_std * noise_l
        if pred_a is not None:
            assert noise_a is not None, "ab initio steps need noise_a"
            types = c0 * (types - c1 * pred_a) + post_std * noise_a
        return frac, lat, types

    @torch.no_grad()
    def sample(
        self,
        num_atoms: torch.Tensor,
        atomic_numbers: torch.Tensor | None,
        *,
        generator: torch.Generator,
        steps: int | None = None,
        step_lr: float | None = None,
        corrector: bool = True,
        allowed_types: torch.Tensor | None = None,
        start: tuple[int, torch.Tensor, torch.Tensor] | None = None,
    ) -> SampleResult:
        """Denoise ``B = len(num_atoms)`` crystals together (one batch on the model's device).

        ``atomic_numbers`` (N,) fixes the composition (csp); ``None`` diffuses the types (ab
        initio; the final types are the argmax over ``allowed_types``, the trained elements by
        default). ``steps`` < T visits the subset :meth:`time_grid` with the DDPM posterior
        between them (respacing, Nichol & Dhariwal 2021); ``None`` = all T steps (the paper).
        ``generator`` (on the model's device) drives every random draw. ``start = (t0, F, L)``
        begins the reverse chain at time ``t0`` from the given (N, 3) fractional coordinates and
        (B, 3, 3) lattices instead of the prior (csp only; used to test denoising from a given
        noise level).
        """
        c = self.config
        dev = self.num_atoms_counts.device
        dtype = next(self.parameters()).dtype
        num_atoms = num_atoms.to(dev)
        b, n = int(num_atoms.shape[0]), int(num_atoms.sum())
        batch = torch.repeat_interleave(torch.arange(b, device=dev), num_atoms)
        edges = fully_connected_edges(num_atoms)
        step_lr = c.step_lr if step_lr is None else step_lr
        ab_initio = atomic_numbers is None
        if ab_initio and c.mode != "ab_initio":
            raise ValueError("diffcsp: crystal-structure-prediction weights need atomic numbers")

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, device=dev, dtype=dtype)

        lat = randn(b, 3, 3)
        frac = torch.rand(n, 3, generator=generator, device=dev, dtype=dtype)
        types = randn(n, MAX_ATOMIC_NUMBER) if ab_initio else atomic_numbers.to(dev)  # type: ignore[union-attr]
        grid = self.time_grid(steps)
        if start is not None:
            if ab_initio:
                raise ValueError("diffcsp: start is supported for crystal structure prediction only")
            t0, frac0, lat0 = start
            grid = [t for t in grid if t <= int(t0)]
            frac, lat = torch.remainder(frac0.to(dev, dtype), 1.0), lat0.to(dev, dtype)
        for k, t in enumerate(grid):
            s = grid[k + 1] if k + 1 < len(grid) else 0
            last = s == 0
            noise_c = None
            if corrector:
                noise_c = torch.zeros_like(frac) if last else randn(n, 3)
            noise_f = torch.zeros_like(frac) if last else randn(n, 3)
            noise_l = torch.zeros_like(lat) if last else randn(b, 3, 3)
            noise_a = None
            if ab_initio:
                noise_a = torch.zeros_like(types) if last else randn(n, MAX_ATOMIC_NUMBER)
            frac, lat, types = self.reverse_step(
                t, s, types, frac, lat, num_atoms, batch, edges,
                step_lr=step_lr, noise_corrector=noise_c, noise_f=noise_f, noise_l=noise_l, noise_a=noise_a,
            )  # fmt: skip

        if ab_initio:
            allowed = allowed_types if allowed_types is not None else torch.as_tensor(c.elements, dtype=torch.long)
            logits = types.clone()
            if allowed.numel():
                mask = torch.ones(MAX_ATOMIC_NUMBER, dtype=torch.bool, device=dev)
                mask[allowed.to(dev) - 1] = False
                logits[:, mask] = -torch.inf
            zs = logits.argmax(dim=-1) + 1
        else:
            zs = types
        return SampleResult(frac, lat, zs)
