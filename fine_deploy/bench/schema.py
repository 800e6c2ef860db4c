"""bench.json: the versioned record of one benchmark run (several models, measured interleaved)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.schemas import BENCH, Number, dict_of, is_type, list_of, malformed, require

SCHEMA = BENCH.schema
KIND = BENCH.tag[1]


@dataclass
class BenchSettings:
    runs: int
    warmup: int
    steps: int
    batch: int
    threads: int | None
    spinning: bool
    backend: str
    run_order: str  # "interleaved" | "sequential"
    order_detail: str
    estimator: str
    timer: str
    time_budget_s: float | None = None
    # Busy seconds before timing: a core that idled reads up to 1.4x slower until it has been busy.
    spinup_s: float = 0.0
    memory_isolation: str | None = None  # how ΔRSS was measured (fine_deploy.runtime.rss.ISOLATION)
    # What makes separate runs comparable on this platform (fine_deploy.bench.platform_metric).
    cross_run_metric: dict[str, Any] | None = None
    until_decided: dict[str, Any] | None = None  # the sequential stop of `bench --until-decided`
    # consecutive runs of one model per turn of an interleaved round (runtime.timing's runs_per_round): one
    # model's runs after another's start with caches the other filled, several in a row are what a loop meets
    block: int = 1


@dataclass
class Calibration:
    """A fixed GEMM timed in the same rounds as the models: a yardstick for cross-run ratios."""

    kernel: str
    flops: float
    samples_s: list[float]
    median_s: float
    session: dict[str, Any]
    cpu_samples_s: list[float] | None = None  # process CPU seconds, same rounds as the models'


@dataclass
class ModelResult:
    name: str
    path: str
    sha256: str | None
    format: str
    backend: str
    providers: list[str]
    session: dict[str, Any]
    input_shapes: dict[str, list[int]]
    samples_s: list[float]
    stats: dict[str, float]
    throughput_per_s: float  # images per second for one denoiser call at ``batch``
    per_image_s: float  # seconds per image for a sampler of ``steps`` calls
    memory: dict[str, int | None]
    # Process CPU seconds per run (CPU backends only): immune to other processes taking the cores.
    cpu_samples_s: list[float] | None = None
    # the plan's promise for this artifact (its manifest's plan): latency_s, under which protocol, and
    # measured median / predicted
    predicted: dict[str, Any] | None = None
    precision: str | None = None  # what the export's manifest says it was written at (None: a bare model file)


@dataclass
class BenchResult:
    created: str
    run_id: str
    machine: dict[str, Any]
    settings: BenchSettings
    calibration: Calibration | None
    models: list[ModelResult] = field(default_factory=list)
    schema: int = SCHEMA
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model(self, name: str) -> ModelResult:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "bench.json") -> BenchResult:
        d = BENCH.check(d, source)
        fix = BENCH.fix
        with malformed(source, BENCH.name, fix):
            settings = BenchSettings(**_known(BenchSettings, d["settings"]))
            cal = d.get("calibration")
            calibration = Calibration(**_known(Calibration, cal)) if cal else None
            models = [ModelResult(**_known(ModelResult, m)) for m in d["models"]]
            result = cls(
                created=d["created"],
                run_id=d["run_id"],
                machine=d["machine"],
                settings=settings,
                calibration=calibration,
                models=models,
            )
        require(is_type(settings.runs, int) and is_type(settings.steps, int) and is_type(settings.batch, int),
                source, "settings.runs, steps and batch must be integers", fix)
        if calibration is not None:
            require(list_of(calibration.samples_s, Number) and is_type(calibration.median_s, Number)
                    and (calibration.cpu_samples_s is None or list_of(calibration.cpu_samples_s, Number)), source,
                    "calibration samples must be numbers", fix)
        for m in models:
            require(isinstance(m.name, str), source, "every model needs a name", fix)
            if not m.samples_s or not list_of(m.samples_s, Number) or not all(s > 0 for s in m.samples_s):
                raise FineDeployError(
                    f"{source}: model {m.name} has no positive timing samples; re-run fine-deploy bench"
                )
            require(m.cpu_samples_s is None or list_of(m.cpu_samples_s, Number), source,
                    f"model {m.name}: cpu_samples_s must be numbers", fix)
            require(dict_of(m.stats, Number) and dict_of(m.memory, (int, type(None))), source,
                    f"model {m.name}: stats and memory must be numbers", fix)
        return result


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Fields of ``cls`` present in ``d``: newer minor additions to a schema-1 file are ignored."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def load_bench(path: str | Path) -> BenchResult:
    path = Path(path)
    data = BENCH.read(path, missing=f"run fine-deploy bench --json {path} first")
    return BenchResult.from_dict(data, str(path))
