"""Training recipes: data files shipped in `fine_deploy/recipes/` (or any YAML/JSON path).

A recipe is the whole description of a training run (backbone and its diffusers config, data,
schedule of FINE / OFA stages, optimiser, seed), so a supernet's provenance can name it and the
run can be repeated bit for bit on one process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.schemas import RECIPE, is_type, malformed, read_document

SCHEMA = RECIPE.schema
MODES = ("fine", "ofa")


@dataclass
class Stage:
    mode: str  # "fine": full size, U, σ, V and dense params jointly; "ofa": one sampled nested size per step
    steps: int


@dataclass
class Recipe:
    name: str
    backbone: str
    config: dict[str, Any]
    stages: list[Stage]
    description: str = ""
    data: dict[str, Any] = field(default_factory=lambda: {"source": "digits", "heldout_fraction": 0.15})
    max_rank: int | None = None  # cap on the shared-basis rank of every type (None: convert's default)
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # decay of the parameters' exponential moving average, which becomes the trained supernet (0: no average)
    ema: float = 0.0
    cfg_dropout: float = 0.1  # class-label dropout (classifier-free guidance), class-conditional only
    scheduler: dict[str, Any] = field(default_factory=lambda: {"num_train_timesteps": 1000})
    # OFA-Diffusion nested training: sizes P, sampling skew m, minimum kept fraction p0, gradient samples
    ofa: dict[str, Any] = field(default_factory=lambda: {
        "sizes": [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0], "m": 3.0, "p0": 0.25,
        "importance_samples": 16, "knobs": ["widths", "ranks"],
    })
    checkpoint_every: int = 200
    heldout_draws: int = 2  # (noise, t) draws per held-out image in the held-out loss
    metric: dict[str, Any] = field(default_factory=lambda: {
        "samples": 500, "sample_steps": 50, "guidance_scale": 1.0,
    })
    schema: int = SCHEMA

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def with_steps(self, steps: int) -> Recipe:
        """The same recipe with `steps` in total, split over the stages in their original proportions."""
        if steps < 1:
            raise FineDeployError(f"--steps {steps}: give at least 1 training step")
        total = self.total_steps
        new, used = [], 0
        for i, s in enumerate(self.stages):
            n = steps - used if i == len(self.stages) - 1 else int(round(steps * s.steps / total))
            new.append(Stage(s.mode, max(0, n)))
            used += new[-1].steps
        d = asdict(self)
        d["stages"] = [asdict(s) for s in new]
        return Recipe.from_json(d, self.name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, where: str) -> Recipe:
        where = f"recipe {where}"
        d = RECIPE.check(d, where)
        with malformed(where, RECIPE.name, RECIPE.fix):
            d = dict(d)
            d["stages"] = [Stage(**s) for s in d.get("stages") or []]
            r = cls(**d)
        for s in r.stages:
            if not is_type(s.steps, int) or not isinstance(s.mode, str):
                raise FineDeployError(f"{where}: every stage needs a mode name and integer steps")
        if not isinstance(r.ofa.get("knobs", []), list):
            raise FineDeployError(f"{where}: ofa.knobs must be a list such as [widths, ranks]")
        sweep = r.metric.get("guidance_sweep")
        if sweep is not None and (not isinstance(sweep, list) or not sweep
                                  or not all(is_type(g, (int, float)) and g >= 0 for g in sweep)):
            raise FineDeployError(f"{where}: metric.guidance_sweep {sweep!r} must be a list of guidance scales ≥ 0 "
                                  "such as [1.0, 1.5, 2.0]")
        if not is_type(r.ema, (int, float)) or not (r.ema == 0 or 0 < r.ema < 1):
            raise FineDeployError(f"{where}: ema {r.ema!r} must be 0 (off) or a decay in (0, 1) such as 0.999")
        if not r.stages:
            raise FineDeployError(f"{where}: no stages; give at least one {{mode: fine, steps: N}}")
        for s in r.stages:
            if s.mode not in MODES:
                raise FineDeployError(f"{where}: stage mode {s.mode!r} is not one of {', '.join(MODES)}")
            if s.steps < 0:
                raise FineDeployError(f"{where}: stage steps {s.steps} is negative")
        from fine_deploy.backbones import SUPPORTED_BACKBONES, adapter_for

        if r.backbone not in SUPPORTED_BACKBONES:
            raise FineDeployError(
                f"{where}: backbone {r.backbone} is not supported; use one of {', '.join(SUPPORTED_BACKBONES)}"
            )
        nested_widths = "widths" in r.ofa.get("knobs", [])
        if any(s.mode == "ofa" for s in r.stages) and not adapter_for(r.backbone).width_knob and nested_widths:
            raise FineDeployError(f"{where}: OFA width nesting needs a backbone with a width knob "
                                  f"({r.backbone} has none); drop 'widths' from ofa.knobs")
        return r


def recipes_dir() -> Path:
    return Path(str(files("fine_deploy") / "recipes"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (`dit-digits`) or a YAML/JSON file path."""
    p = Path(name_or_path)
    if not p.is_file():
        p = recipes_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        raise FineDeployError(
            f"no recipe {str(name_or_path)!r}; shipped recipes: {', '.join(list_recipes())} (or pass a YAML/JSON path)"
        )
    d = read_document(p, "recipe", missing=RECIPE.fix, invalid=RECIPE.fix,
                      text="json" if p.suffix == ".json" else "yaml")
    return Recipe.from_json(d, str(p))
