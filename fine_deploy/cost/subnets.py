"""Random subnets of a layer list: chains of layers whose activations fit, with random forms and ranks.

The profiler times a few of them end to end to calibrate the fixed overhead; the predictor-accuracy
benchmark times many to score the predictor against ground truth.
"""

from __future__ import annotations

import random

from fine_deploy.cost.graphs import LayerChoice, input_dims, output_dims
from fine_deploy.cost.shapes import FORMS, LayerShape, default_ranks, distinct


def _successors(shapes: list[LayerShape]) -> dict[str, list[LayerShape]]:
    return {a.key(): [b for b in shapes if input_dims(b) == output_dims(a)] for a in shapes}


def random_choice(shape: LayerShape, rng: random.Random, ranks: list[int] | None = None) -> LayerChoice:
    """A random form and rank; `ranks` None means quarters of the full rank, [] dense only."""
    options = default_ranks(shape) if ranks is None else ranks
    form = rng.choice(FORMS) if options else "dense"
    if form == "dense":
        return LayerChoice(shape)
    return LayerChoice(shape, form, rng.choice(options))


def random_chain(
    shapes: list[LayerShape],
    rng: random.Random,
    *,
    max_layers: int = 12,
    ranks: dict[str, list[int]] | None = None,
) -> list[LayerChoice]:
    """A random walk over layers whose input is the previous layer's output, from 1 to max_layers long."""
    pool = distinct(shapes)
    succ = _successors(pool)
    starts = [s for s in pool if succ[s.key()]] or pool
    length = rng.randint(1, max_layers)
    shape = rng.choice(starts)
    chain = [random_choice(shape, rng, (ranks or {}).get(shape.key()))]
    while len(chain) < length and succ[shape.key()]:
        shape = rng.choice(succ[shape.key()])
        chain.append(random_choice(shape, rng, (ranks or {}).get(shape.key())))
    return chain
