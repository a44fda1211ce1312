"""``num_samples`` valid crystals from any generator, every rejected sample accounted for.

:func:`generate_valid` asks a :class:`~crystal.components.Generator` for crystals round after
round until ``num_samples`` valid ones are delivered or the attempt budget (``max_attempts``
samples drawn, valid and rejected together) is spent:

1. **Rounds.** Round 0 draws ``num_samples`` samples with ``seed`` itself (so a call that needs
   no retry draws exactly what ``generator.generate(num_samples, seed=seed)`` draws); round
   ``r > 0`` draws with :func:`round_seed` ``(seed, r)`` as many samples as the acceptance so far
   suggests are needed (``ceil(need · (drawn + 1) / (valid + 1))``), never more than the budget
   left. A call is reproducible for its seed, ``num_samples``, budget and generator config.
2. **Rejections.** Each round's rejected samples come from
   :meth:`~crystal.components.Generator.generate_detailed` (slot and reason); with ``check``
   (e.g. the pipeline's ``min_distance`` test) the crystals it refuses are rejected too. Every
   rejected sample becomes a :class:`Rejected` row (its id and reason).
3. **Order and surplus.** Samples are taken in draw order (round by round, slot by slot) until
   ``num_samples`` valid ones are in; the samples after that point in the last round (drawn
   because of the over-draw) are discarded, neither delivered nor rejected.
4. **Ids.** Sample ``k`` of the call (counting valid and rejected ones in draw order) gets the
   id ``<id_prefix>-<k>``; the default prefix is ``<generator name>-<token>`` with a fresh random
   8-hex-digit token per call, so ids never repeat across calls and runs. (The pipeline passes
   ``<name>-<run id>-<block>`` so ids are stable within a resumed run.) The generator's own id
   is kept in ``info["generator_id"]``, the round's seed in ``info["round_seed"]``.
5. **Shortfall.** When the budget runs out first, :attr:`GenerationOutcome.shortfall` says how
   many crystals are missing and the commonest reasons; it is never silent (the pipeline
   reports it as a warning event and in the manifest).
"""

from __future__ import annotations

import math
import operator
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crystal.errors import ConfigError

if TYPE_CHECKING:
    from crystal.batch import CrystalBatch
    from crystal.components import GenerationConditions, GenerationResult

__all__ = [
    "DEFAULT_ATTEMPTS_PER_SAMPLE",
    "GenerationOutcome",
    "Rejected",
    "check_conditions",
    "generate_valid",
    "reason_kind",
    "round_seed",
]

#: the default attempt budget, in samples drawn per requested crystal
DEFAULT_ATTEMPTS_PER_SAMPLE = 4

_MASK31 = (1 << 31) - 1
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def reason_kind(reason: str) -> str:
    """``reason`` with its numbers replaced by ``…``, to count reasons by kind
    (``"atoms closer than … Å (minimum distance … Å)"``)."""
    return _NUMBER.sub("…", reason)


@dataclass(frozen=True)
class Rejected:
    """One rejected sample of :func:`generate_valid`: its id (``<prefix>-<k>``), why it was
    rejected, the round it was drawn in and its slot in that round's ``generate`` call."""

    id: str
    reason: str
    round: int = 0
    sample: int = 0


@dataclass
class GenerationOutcome:
    """What :func:`generate_valid` delivered.

    ``batch``      the valid crystals (``len(batch) <= requested``), ids ``<prefix>-<k>``
    ``rejected``   one :class:`Rejected` per rejected sample, in draw order
    ``requested``  ``num_samples``
    ``drawn``      samples drawn from the generator, all rounds (``<= max_attempts``)
    ``max_attempts``  the budget (samples)
    ``rounds``     ``generate`` calls made
    ``seed``       the seed of round 0
    """

    batch: CrystalBatch
    rejected: list[Rejected]
    requested: int
    drawn: int
    max_attempts: int
    rounds: int
    seed: int

    @property
    def delivered(self) -> int:
        return len(self.batch)

    @property
    def missing(self) -> int:
        """Crystals asked for but not delivered (``0`` when the request was met)."""
        return self.requested - self.delivered

    @property
    def shortfall(self) -> str | None:
        """``None`` when every requested crystal was delivered, else one line saying how many,
        why (the commonest rejection reasons) and what to change."""
        if not self.missing:
            return None
        common = Counter(reason_kind(r.reason) for r in self.rejected).most_common(3)
        why = "; ".join(f"{n}× {reason}" for reason, n in common) or "the generator returned nothing"
        return (
            f"delivered {self.delivered} of {self.requested} crystals: {self.drawn} samples drawn "
            f"(attempt budget {self.max_attempts}), {len(self.rejected)} rejected ({why}); "
            "raise the attempt budget (max_attempts) or change the generator's config"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (the pipeline manifest's ``generation`` entry)."""
        return {
            "requested": self.requested,
            "delivered": self.delivered,
            "rejected": len(self.rejected),
            "drawn": self.drawn,
            "max_attempts": self.max_attempts,
            "rounds": self.rounds,
            "seed": self.seed,
            "reasons": dict(Counter(reason_kind(r.reason) for r in self.rejected).most_common(10)),
            "shortfall": self.shortfall,
        }


def round_seed(seed: int, round_index: int) -> int:
    """The generator seed of round ``round_index`` of a call seeded ``seed``: ``seed`` itself for
    round 0, else a 31-bit number mixed from both (numpy ``SeedSequence``)."""
    if round_index == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), 0x5EED, int(round_index)]).generate_state(1)[0]) & _MASK31


def check_conditions(generator: Any, conditions: GenerationConditions | None) -> None:
    """``generator``'s :meth:`~crystal.components.Generator.check_conditions` with its own
    config (a generator without the method accepts everything)."""
    check = getattr(type(generator), "check_conditions", None)
    if check is not None and conditions is not None:
        check(conditions, getattr(generator, "config", None))


def _detailed(generator: Any, n: int, conditions: GenerationConditions | None, seed: int) -> GenerationResult:
    """One round: ``generate_detailed`` when the generator has it, else ``generate`` (a duck-typed
    generator) with the missing slots given a generic reason."""
    from crystal.components import GenerationResult, Generator, RejectedSample

    if isinstance(generator, Generator) or hasattr(generator, "generate_detailed"):
        res: GenerationResult = generator.generate_detailed(n, conditions, seed=seed)
        return res
    batch = generator.generate(n, conditions, seed=seed)
    name = getattr(generator, "name", type(generator).__name__)
    why = f"generator {name!r} returned {len(batch)} of {n} crystals and gave no reason for this sample"
    return GenerationResult(batch, [RejectedSample(k, why) for k in range(len(batch), n)])


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"generate: {what} must be a non-negative integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ConfigError(f"generate: {what} must be a non-negative integer, got {value!r}") from None
    if out < 0:
        raise ConfigError(f"generate: {what} must be a non-negative integer, got {value!r}")
    return out


def generate_valid(
    generator: Any,
    num_samples: int,
    conditions: GenerationConditions | None = None,
    *,
    seed: int | None = None,
    max_attempts: int | None = None,
    id_prefix: str | None = None,
    check: Callable[[CrystalBatch], list[str | None]] | None = None,
) -> GenerationOutcome:
    """Up to ``num_samples`` valid crystals from ``generator``, sampling again until there are
    ``num_samples`` or ``max_attempts`` samples have been drawn (module docstring: rules 1–5).

    ``seed``: the seed of round 0 (``None``: a fresh one, recorded in the outcome);
    ``max_attempts``: the budget in samples drawn, valid and rejected together (``>= num_samples``;
    default :data:`DEFAULT_ATTEMPTS_PER_SAMPLE` × ``num_samples``); ``id_prefix``: ids are
    ``<id_prefix>-<k>`` (default ``<name>-<random token>``); ``check``: reasons (``None`` = fine)
    for the crystals of a round, e.g. ``lambda b: b.validate(min_distance)``.

    Conditions the generator cannot honour raise :class:`~crystal.errors.ConfigError` before
    anything is drawn (its ``check_conditions``).
    """
    import torch

    from crystal.batch import CrystalBatch

    num_samples = _whole(num_samples, "num_samples")
    budget = DEFAULT_ATTEMPTS_PER_SAMPLE * num_samples if max_attempts is None else int(max_attempts)
    if budget < num_samples:
        raise ConfigError(f"generate: max_attempts ({budget}) must be at least num_samples ({num_samples})")
    seed = secrets.randbits(31) if seed is None else _whole(seed, "seed")
    name = str(getattr(generator, "name", type(generator).__name__))
    prefix = id_prefix if id_prefix is not None else f"{name}-{secrets.token_hex(4)}"
    check_conditions(generator, conditions)

    parts: list[CrystalBatch] = []
    rejected: list[Rejected] = []
    valid = drawn = rounds = k = 0
    while valid < num_samples and drawn < budget:
        need = num_samples - valid
        want = need if rounds == 0 else math.ceil(need * (drawn + 1) / (valid + 1))
        n = min(want, budget - drawn)
        s = round_seed(seed, rounds)
        res = _detailed(generator, n, conditions, s)
        drawn += n
        batch = res.batch.to("cpu")
        slots = res.slots(n)
        if len(batch) > len(slots):  # more crystals than slots: a generator ignoring num_samples
            batch = batch.select(list(range(len(slots))))
        why: dict[int, str] = {r.sample: r.reason for r in res.rejected}
        if check is not None and len(batch):
            for slot, problem in zip(slots, check(batch), strict=True):
                if problem is not None:
                    why[slot] = problem
        pos = {slot: i for i, slot in enumerate(slots)}
        keep: list[int] = []
        ids: list[str] = []
        for slot in range(n):
            if valid == num_samples:
                break  # surplus of the over-draw: neither delivered nor rejected
            if slot in why or slot not in pos:
                reason = why.get(slot, f"generator {name!r} returned no crystal for this sample")
                rejected.append(Rejected(f"{prefix}-{k}", reason, rounds, slot))
            else:
                keep.append(pos[slot])
                ids.append(f"{prefix}-{k}")
                valid += 1
            k += 1
        if keep:
            got = batch.select(torch.tensor(keep, dtype=torch.long))
            for info, own in zip(got.info, got.ids, strict=True):
                info["generator_id"] = own
                info["round_seed"] = s
            got.ids = ids
            parts.append(got)
        rounds += 1
    out = CrystalBatch.concat(parts) if parts else CrystalBatch.empty()
    return GenerationOutcome(out, rejected, num_samples, drawn, budget, rounds, seed)
