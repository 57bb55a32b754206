"""Inference shared out among the processes ``torchrun`` starts (one machine or several): which rank runs which
images, and the one exchange through which the ranks stay in step, hand their results to rank 0 and stop
together.

Shapes: B batches, N ranks (the world size).

**The plan** (``plan_chunks``). The batches are those one process would make (the same images together, so each
image is padded, and detected, exactly as by one process). They are taken in order in *chunks* of about
``per_rank`` images a rank, and each chunk is cut into N consecutive runs of batches whose costs are as equal as
one batch allows (``contiguous_split``). A batch's cost is the pixels it decodes plus the pixels the network
runs on (``image_cost``: rescaled and padded): no rank waits on another by more than one batch a chunk. Rank
r's results of a chunk are a consecutive run of the single process's, so rank order is image order: results
are concatenated, never sorted, and no per-image message is ever sent.

**The exchange** (``RankGroup.gather``). After each chunk every rank sends its outcome (``capture``: its
results, or the ``FrcnnError`` it met) to rank 0, which answers every rank with the first failure in rank order,
or with a value of its own (``reply``: the next chunk of ``detect``'s stream). A failure on any rank therefore
stops every rank at the same exchange with the same error; rank 0 reports it, and the others raise it with
``quiet`` set: the CLI prints nothing there and leaves with status 0, so that torchrun, which stops every
process as soon as one fails, lets rank 0 print its one ``Error:`` line and leave with the error's status.
Objects travel over a gloo group on the host, also when the model runs on NCCL. With one process every
exchange is a local call.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .errors import FrcnnError

CHUNK_IMAGES = 256  # images a rank runs between two exchanges (eval, dump-proposals)


def image_cost(height: int, width: int, input_cfg) -> float:
    """What one image costs to run, in pixels: decoded (``height x width``) plus run on (rescaled)."""
    from .data.images import compute_scale, resized_size

    scale = compute_scale(height, width, input_cfg.test_scale, input_cfg.max_size)
    rh, rw = resized_size(height, width, scale)
    return float(height * width + rh * rw)


def batch_cost(sizes: Sequence[tuple[int, int]], input_cfg) -> float:
    """The cost of a batch of images of ``sizes`` ``(height, width)``: each decoded, all run padded to the
    largest rescaled height and width."""
    from .data.images import compute_scale, resized_size

    scaled = [resized_size(h, w, compute_scale(h, w, input_cfg.test_scale, input_cfg.max_size)) for h, w in sizes]
    padded = len(sizes) * max(h for h, _ in scaled) * max(w for _, w in scaled)
    return float(sum(h * w for h, w in sizes) + padded)


def contiguous_split(costs: Sequence[float], parts: int) -> list[range]:
    """``range(len(costs))`` cut into ``parts`` consecutive ranges (some empty when there are fewer items) with
    nearly equal sums: cut ``j`` falls at the item boundary nearest to ``j / parts`` of the total, so each part
    is within one item's cost of its fair share."""
    prefix = list(itertools.accumulate(costs, initial=0.0))
    total, cuts = prefix[-1], [0]
    for j in range(1, parts):
        target = total * j / parts
        k = bisect.bisect_left(prefix, target)
        if 0 < k < len(prefix) and target - prefix[k - 1] <= prefix[k] - target:
            k -= 1
        cuts.append(min(max(k, cuts[-1]), len(costs)))
    cuts.append(len(costs))
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


def batches_of(keys: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """``keys`` in consecutive batches of ``batch_size`` (the last one shorter), as one process runs them."""
    return [list(keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)]


def split_chunk(batches: list[list[Any]], costs: Sequence[float], world: int) -> list[list[list[Any]]]:
    """One chunk's batches as ``world`` consecutive, cost-balanced shares (``shares[r]``: rank r's batches)."""
    return [batches[r.start:r.stop] for r in contiguous_split(costs, world)]


def plan_chunks(batches: list[list[Any]], costs: Sequence[float], world: int, *,
                per_rank: int) -> list[list[list[list[Any]]]]:
    """Every chunk of a run: ``plan[k][r]`` is the list of batches rank r runs in chunk k (module docstring).
    A chunk holds about ``per_rank * world`` images (at least one batch a rank)."""
    size = max(1, len(batches[0]) if batches else 1)
    step = max(1, per_rank // size) * world
    return [split_chunk(batches[i:i + step], costs[i:i + step], world) for i in range(0, len(batches), step)]


def flat(batches: list[list[Any]]) -> list[Any]:
    return [key for batch in batches for key in batch]


# --------------------------------------------------------------------------------------------------
# outcomes and the exchange


@dataclass
class Outcome:
    """What one rank brings to an exchange: ``value``, or the ``FrcnnError`` it met as ``(kind, message,
    exit code)`` (plain data: it is pickled to rank 0; ``raised``, the exception itself, stays here)."""

    value: Any = None
    failure: tuple[str, str, int] | None = None
    raised: FrcnnError | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "raised": None}

    def error(self, *, quiet: bool) -> FrcnnError:
        """The failure as an exception of its kind (a kind outside ``frcnn_cli.errors``: a ``FrcnnError`` with
        its exit code); ``quiet``: another rank reports it."""
        kind, message, code = self.failure
        cls = getattr(errors, kind, None)
        exc = cls(message) if isinstance(cls, type) and issubclass(cls, FrcnnError) else FrcnnError(message)
        exc.exit_code, exc.quiet = code, quiet
        return exc


def capture(work: Callable[[], Any]) -> Outcome:
    """``work()``'s value, or the ``FrcnnError`` it raised, as an ``Outcome`` (other exceptions are bugs: they
    propagate, the rank dies and torchrun stops the others)."""
    try:
        return Outcome(work())
    except FrcnnError as exc:
        return Outcome(failure=(type(exc).__name__, str(exc), exc.exit_code), raised=exc)


class RankGroup:
    """This process's place among the ranks of a sharded command, and their exchanges.

    ``RankGroup()`` is one process alone (every exchange local); ``RankGroup.join(device)`` joins the processes
    ``torchrun`` started (``train.distributed.setup``: gloo on the CPU, NCCL on GPUs, one GPU a process) and
    makes a gloo group for the exchanges."""

    def __init__(self, rank: int = 0, world: int = 1, group: Any = None) -> None:
        self.rank, self.world, self._group = rank, world, group

    @classmethod
    def join(cls, device):
        """``(group, device)``: this process's group and its device (``cuda:LOCAL_RANK`` on GPUs)."""
        import torch.distributed as dist

        from .train import distributed

        device = distributed.setup(device)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return cls(), device
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), group), device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, outcome: Outcome, reply: Callable[[list], Any] | None = None) -> tuple[list | None, Any]:
        """Every rank's ``outcome`` on rank 0, and rank 0's answer on every rank: ``(values, answer)`` with
        ``values`` the ranks' values in rank order on rank 0 (None elsewhere) and ``answer`` what ``reply(values)``
        returned on rank 0. A collective: every rank calls it at the same step. When any rank failed (or
        ``reply`` raised a ``FrcnnError``), every rank raises the first failure instead."""
        if self.world == 1:
            values = [self._checked([outcome])[0]]
            return values, self._answer(values, reply)
        import torch.distributed as dist

        gathered: list | None = [None] * self.world if self.is_main else None
        dist.gather_object(outcome, gathered, dst=0, group=self._group)
        answer: list = [None]
        if self.is_main:
            failed = next((o for o in gathered if o.failure is not None), None)
            answer[0] = failed or capture(lambda: self._answer([o.value for o in gathered], reply))
        dist.broadcast_object_list(answer, src=0, group=self._group)
        if answer[0].failure is not None:
            raise answer[0].error(quiet=not self.is_main)
        return ([o.value for o in gathered] if self.is_main else None), answer[0].value

    def agree(self, work: Callable[[], Any]) -> Any:
        """``work()`` on every rank (a command's set-up: reading the model, the data), then one exchange of whether
        it worked: its value here, or on every rank the first rank's ``FrcnnError``. Only the outcome travels."""
        outcome = capture(work)
        self.gather(Outcome(failure=outcome.failure, raised=outcome.raised))
        return outcome.value

    def from_main(self, work: Callable[[], Any]) -> Any:
        """``work()`` run on rank 0 and its value on every rank (its ``FrcnnError`` raised on every rank)."""
        return self.gather(Outcome(), reply=lambda _: work())[1]

    @staticmethod
    def _checked(outcomes: list[Outcome]) -> list:
        for o in outcomes:
            if o.failure is not None:
                raise o.raised if o.raised is not None else o.error(quiet=False)
        return [o.value for o in outcomes]

    @staticmethod
    def _answer(values: list, reply: Callable[[list], Any] | None) -> Any:
        return reply(values) if reply is not None else None
