"""The measurement protocol: how one latency number is taken from a noisy machine.

Measured on the 2-core host: at 2 threads with spinning on, the median of 30 runs of the *same*
model varies by ~20% from repeat to repeat; with 1 intra-op thread, spinning off, a warm-up and the
minimum over >= 60 runs, repeats agree within 10% ~98% of the time. The minimum estimates the
undisturbed cost (noise only ever adds time), and interleaving the candidates round by round
spreads slow phases of the machine over all of them instead of biasing one.

The host's CPU also runs slower until it has been busy for a while: a 17 us graph timed right
after an idle pause took 16-20 us, and 12 us once the core had been busy for 2 s (it dropped
back within 0.1 s of idling). `spin_up` keeps a timing from starting on a cold core.

Two protocols serve two purposes. Layer costs (`profile`) take the minimum of the calling thread's
CPU time: it separates a microsecond of difference between two graphs on a shared machine. What a
plan promises, and what `bench` reports next to it, is the statistic a user meets: the median wall
time of one run at the plan's threads (`PREDICTION`); `profile --supernet` times whole exported
subnets under it and maps the layer sums onto it, so that the two meet.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError

ESTIMATORS = ("min", "p10", "median")
CLOCKS = ("thread", "wall")


@dataclass(frozen=True)
class Protocol:
    """How latencies are measured; recorded in every LUT and benchmark file."""

    threads: int = 1
    spinning: bool = False
    warmup: int = 10
    rounds: int = 10
    runs_per_round: int = 10  # rounds x runs_per_round samples per candidate (>= 60 for the minimum)
    estimator: str = "min"
    interleaved: bool = True
    # "thread": CPU time of the calling thread (time.thread_time), valid only for a CPU runtime on one
    # intra-op thread, where all work runs in that thread: time the scheduler gives to other
    # processes of a shared machine is then not counted. "wall": perf_counter, for GPUs and threads > 1.
    clock: str = "thread"
    # busy seconds before a timing group starts when the core idled since the last one (see spin_up)
    spinup_s: float = 2.0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise FineDeployError(f"estimator {self.estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
        if self.clock not in CLOCKS:
            raise FineDeployError(f"clock {self.clock!r} is unknown; use one of {', '.join(CLOCKS)}")
        if self.clock == "thread" and self.threads != 1:
            raise FineDeployError(
                "the thread clock needs threads=1 (other threads' work is not counted); use clock=wall"
            )
        if self.threads < 1 or self.rounds < 1 or self.runs_per_round < 1 or self.warmup < 0 or self.spinup_s < 0:
            raise FineDeployError(
                "protocol counts must be positive (threads, rounds, runs_per_round >= 1; warmup, spinup_s >= 0)"
            )

    @property
    def samples(self) -> int:
        return self.rounds * self.runs_per_round

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        return cls(**d)


# What plans predict and `bench` measures by default: the median wall time of one run on one
# intra-op thread, warmed up, candidates interleaved round by round.
PREDICTION = Protocol(threads=1, spinning=False, warmup=10, rounds=15, runs_per_round=10, estimator="median",
                      clock="wall")


def describe(protocol: Protocol) -> str:
    """One line a user can repeat the measurement from."""
    p = protocol
    clock = "wall time (perf_counter)" if p.clock == "wall" else "thread CPU time"
    return (f"{p.estimator} {clock} of one run over {p.samples} runs after {p.warmup} warm-up, {p.threads} intra-op "
            f"thread{'s' if p.threads > 1 else ''}, spinning {'on' if p.spinning else 'off'}"
            + (", interleaved" if p.interleaved else ""))


_last_busy = {"wall": float("-inf"), "cpu": 0.0}  # when this process's last timing group ended


def spin_up(seconds: float) -> None:
    """Keep the calling thread busy for `seconds` unless it stayed busy since the last timing group.

    "Busy" means its CPU time grew by >= 90% of the wall time since then: building graphs and
    opening sessions between groups keep the core warm, while sleeping, file syncs and other
    processes let it cool down.
    """
    wall, cpu = time.perf_counter() - _last_busy["wall"], time.thread_time() - _last_busy["cpu"]
    if seconds <= 0 or cpu >= 0.9 * wall:
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # plain Python: one thread, like the timing (BLAS would start more)
        sum(range(1000))


def _mark_busy() -> None:
    _last_busy["wall"], _last_busy["cpu"] = time.perf_counter(), time.thread_time()


def run_timer(run: Callable[[], object], clock: str) -> Callable[[int], np.ndarray]:
    """A runner that calls `run` n times and returns seconds per call on `clock`."""
    now = time.thread_time if clock == "thread" else time.perf_counter

    def timed(n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            t0 = now()
            run()
            out[i] = now() - t0
        return out

    return timed


def session_runner(session: Any, feeds: dict[str, np.ndarray], clock: str) -> Callable[[int], np.ndarray]:
    """A runner (n -> seconds per run) of one runtime session: its own synchronised wall timing
    (Session.time_runs), or the calling thread's CPU time for a CPU runtime on one thread."""
    if clock == "wall":
        return lambda n: session.time_runs(feeds, n)
    return run_timer(lambda: session.run(feeds), clock)


def estimate(samples: np.ndarray, estimator: str) -> float:
    if estimator == "min":
        return float(np.min(samples))
    if estimator == "p10":
        return float(np.quantile(samples, 0.10))
    return float(np.median(samples))


@dataclass(frozen=True)
class Timing:
    seconds: float  # the protocol's estimate
    median_s: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_interleaved(
    runners: Sequence[Callable[[int], np.ndarray]], protocol: Protocol, *, seed: int = 0
) -> list[Timing]:
    """Time every runner (`runner(n)` -> n seconds-per-run samples) round by round in shuffled order."""
    spin_up(protocol.spinup_s)
    for run in runners:
        if protocol.warmup:
            run(protocol.warmup)
    samples: list[list[np.ndarray]] = [[] for _ in runners]
    order = list(range(len(runners)))
    rng = random.Random(seed)
    for _ in range(protocol.rounds):
        if protocol.interleaved:
            rng.shuffle(order)
        for i in order:
            samples[i].append(runners[i](protocol.runs_per_round))
    _mark_busy()
    out = []
    for chunks in samples:
        s = np.concatenate(chunks)
        out.append(Timing(estimate(s, protocol.estimator), float(np.median(s)), int(s.size)))
    return out
