"""The file contracts of fine-deploy: one way to read, check and refuse every file the project reads.

Each file format (plan, LUT, export manifest, bench result, device profile, recipe, supernet spec)
has one :class:`Contract` here: its tag field and value (``format``/``kind``), the schema version this
code reads, the fields that must be present and their JSON types, the optional ones, and one policy
for unknown fields:

* files people write by hand (device profiles, recipes) refuse unknown fields, so a typo is never
  silently ignored;
* files the tool writes (plan, LUT, manifest, bench, supernet spec) ignore unknown fields, so a
  newer minor writer of the same schema still reads.

Every failure is a :class:`~fine_deploy.errors.FineDeployError` of one line: where, what is wrong,
and the fix. :func:`malformed` turns a mistyped nested value met while building the typed object
(a ``TypeError``/``KeyError``/``ValueError``...) into the same one line, so that no corrupt file
ends in a traceback. The loaders themselves stay next to their dataclasses; they call
``CONTRACT.check`` (or ``CONTRACT.read``) first.

This module sits at the bottom of the package (it imports only ``errors`` and the standard
library), so ``runtime`` can read a manifest without importing the exporter.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError

Number = (int, float)
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _type_name(typ: type | tuple[type, ...]) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    if set(types) >= {int, float}:
        types = tuple(t for t in types if t is not int)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def is_type(value: Any, typ: type | tuple[type, ...]) -> bool:
    """JSON-minded isinstance: a bool is not a number, a float must be finite."""
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, types)


@dataclass(frozen=True)
class Contract:
    """The checks every file of one format gets before any of its values is used."""

    name: str  # what the user calls the file: "plan", "LUT", "manifest", ...
    fix: str  # how to get a good one: "re-run `fine-deploy plan`"
    schema: int
    required: Mapping[str, type | tuple[type, ...]]
    optional: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    tag: tuple[str, str] | None = None  # ("format", "fine-deploy-plan")
    schema_key: str = "schema"
    schema_required: bool = True
    hand_written: bool = False  # True: unknown fields are refused (a typo is never ignored)
    older: tuple[int, ...] = ()  # earlier schema versions this code still reads (their loader upgrades them)

    def check(self, data: Any, where: str) -> dict[str, Any]:
        """The checked mapping, or a FineDeployError naming the first problem."""
        if not isinstance(data, dict):
            raise FineDeployError(f"{where}: not a {self.name} (expected a mapping of fields); {self.fix}")
        if self.tag is not None:
            key, value = self.tag
            if data.get(key) != value:
                raise FineDeployError(
                    f"{where}: not a fine-deploy {self.name} ({key} is {data.get(key)!r}, expected {value!r}); "
                    f"{self.fix}"
                )
        if self.schema_key in data or self.schema_required:
            got = data.get(self.schema_key)
            if (got != self.schema and got not in self.older) or isinstance(got, bool):
                raise FineDeployError(
                    f"{where}: {self.name} schema {got!r} is not supported (this fine-deploy reads schema "
                    f"{self.schema}); {self.fix}"
                )
        for key, typ in self.required.items():
            if key not in data:
                raise FineDeployError(f"{where}: {self.name} lacks field {key!r}; {self.fix}")
            if not is_type(data[key], typ):
                raise FineDeployError(
                    f"{where}: {self.name} field {key!r} must be {_type_name(typ)}, not {_short(data[key])}; "
                    f"{self.fix}"
                )
        for key, typ in self.optional.items():
            if key in data and not is_type(data[key], typ):
                raise FineDeployError(
                    f"{where}: {self.name} field {key!r} must be {_type_name(typ)}, not {_short(data[key])}; "
                    f"{self.fix}"
                )
        if self.hand_written:
            known = set(self.required) | set(self.optional) | {self.schema_key}
            if self.tag is not None:
                known.add(self.tag[0])
            extra = sorted(str(k) for k in set(data) - known)
            if extra:
                raise FineDeployError(
                    f"{where}: {self.name} has unknown field(s) {', '.join(extra)}; remove them "
                    f"(known: {', '.join(sorted(known))})"
                )
        return data

    def read(self, path: str | os.PathLike, *, missing: str | None = None, text: str = "json") -> dict[str, Any]:
        """Read and check one file (JSON, or YAML with text="yaml")."""
        path = Path(path)
        return self.check(read_document(path, self.name, missing=missing or self.fix, invalid=self.fix,
                                        text=text), str(path))


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def read_document(path: str | os.PathLike, name: str, *, missing: str, invalid: str, text: str = "json") -> Any:
    """Parse a JSON or YAML file; a missing, unreadable or unparsable file is one FineDeployError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FineDeployError(f"{path} does not exist; {missing}") from None
    except OSError as e:
        raise FineDeployError(f"{path} cannot be read ({e.strerror}); {invalid}") from None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FineDeployError(f"{path} is not UTF-8 text (byte {e.start}); {invalid}") from None
    if text == "yaml":
        import yaml

        try:
            return yaml.safe_load(decoded)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise FineDeployError(f"{path} is not valid YAML{line}; {invalid}") from None
    try:
        return json.loads(decoded, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise FineDeployError(f"{path} is not valid JSON ({_first_line(e)}); {invalid}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


@contextlib.contextmanager
def malformed(where: str, name: str, fix: str) -> Iterator[None]:
    """Building the typed object from a checked mapping: a mistyped nested value is one clear line."""
    try:
        yield
    except FineDeployError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        what = f"{type(e).__name__}: {_first_line(e)}" if not isinstance(e, KeyError) else f"missing {e}"
        raise FineDeployError(f"{where}: malformed {name} ({what}); {fix}") from None


def require(ok: bool, where: str, problem: str, fix: str) -> None:
    """One semantic check of a loader: `problem` when not ok."""
    if not ok:
        raise FineDeployError(f"{where}: {problem}; {fix}")


def list_of(value: Any, typ: type | tuple[type, ...]) -> bool:
    return isinstance(value, list) and all(is_type(v, typ) for v in value)


def dict_of(value: Any, typ: type | tuple[type, ...]) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and is_type(v, typ) for k, v in value.items())


# --- the contracts -------------------------------------------------------------------------------

PLAN = Contract(
    name="plan", fix="make it again with `fine-deploy plan ... -o plan.json`", schema=1,
    tag=("format", "fine-deploy-plan"),
    required={"supernet": dict, "subnet": dict},
    optional={"kernels": dict, "precision": dict, "profile": dict, "budget": dict, "inputs": dict, "predicted": dict,
              "binding": (str, type(None)), "solver": dict, "explain": list},
)

LUT = Contract(
    name="LUT", fix="re-run `fine-deploy profile`", schema=2,
    required={"device": str, "runtime": str, "fingerprint": dict, "runtime_versions": dict, "session": dict,
              "protocol": dict, "empty_run_s": Number, "entries": dict, "boundaries": dict, "calibration": dict,
              "roofline": dict, "complete": bool},
    # a layer-chain memory fit that plan never read; LUTs written before its removal still load
    optional={"memory": dict},
)

MANIFEST = Contract(
    name="export manifest", fix="re-run `fine-deploy export`", schema=1,
    tag=("kind", "fine-deploy-export"),
    required={"format": str, "model": str, "backbone": str, "plan": dict, "supernet": dict, "subnet": dict,
              "kernels": dict, "inputs": list, "outputs": list, "options": dict},
    optional={"files": dict, "parity": list, "weights": dict, "checks": dict, "notes": list, "tools": dict,
              "sampling": dict},
)

BENCH = Contract(
    name="bench result", fix="re-run `fine-deploy bench ... --json FILE`", schema=1,
    tag=("kind", "fine-deploy/bench"),
    required={"created": str, "run_id": str, "machine": dict, "settings": dict, "models": list},
    optional={"calibration": (dict, type(None))},
)

PROFILE = Contract(
    name="device profile", fix="fix the file (see profiles/h100-sxm.yaml)", schema=1, hand_written=True,
    required={"name": str, "description": str, "kind": str, "source": str, "runtime": str, "runtimes": list,
              "dtypes": list, "peak_flops": dict, "memory_bandwidth": Number, "memory_bytes": int,
              "usable_memory_bytes": int, "runtime_overhead_bytes": int, "launch_overhead_s": Number},
    optional={"aliases": (list, type(None)), "probed": (dict, type(None)), "probe": bool, "precisions": list,
              "precisions_source": str},
)

RECIPE = Contract(
    name="recipe", fix="see fine_deploy/recipes/*.yaml for the layout", schema=1, hand_written=True,
    schema_required=False,
    required={"name": str, "backbone": str, "config": dict, "stages": list},
    optional={"description": str, "data": dict, "max_rank": (int, type(None)), "seed": int, "batch_size": int,
              "lr": Number, "weight_decay": Number, "warmup_steps": int, "grad_clip": Number,
              "ema": Number, "cfg_dropout": Number, "scheduler": dict, "ofa": dict, "checkpoint_every": int,
              "heldout_draws": int, "metric": dict},
)

SUPERNET = Contract(
    name="supernet spec", fix="re-create the supernet (`fine-deploy convert` or `train`)", schema=2, older=(1,),
    tag=("format", "fine-deploy-supernet"),
    required={"backbone": str, "config": dict, "types": list, "dense": list},
    optional={"widths": dict, "depth": dict, "sensitivity": dict, "tensors": dict, "weights_sha256": str,
              "provenance": dict, "conversion": dict, "pipeline": dict},
)

CONTRACTS = {c.name: c for c in (PLAN, LUT, MANIFEST, BENCH, PROFILE, RECIPE, SUPERNET)}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The one reader of an export's manifest.json (used by the exporter's Manifest and by runtime)."""
    path = Path(directory) / "manifest.json"
    data = MANIFEST.read(path, missing="it is not a fine-deploy export; pass a directory written by "
                                       "`fine-deploy export` or the model file itself")
    where = str(path)
    fix = MANIFEST.fix
    require(bool(data["model"]) and not Path(data["model"]).is_absolute() and ".." not in Path(data["model"]).parts,
            where, f"model {data['model']!r} is not a file inside the export", fix)
    for spec in data["inputs"] + data["outputs"]:
        require(isinstance(spec, dict) and isinstance(spec.get("name"), str), where,
                "every input/output needs a name", fix)
        shape = spec.get("shape")
        require(isinstance(shape, list) and all(is_type(d, (int, str)) for d in shape), where,
                f"{spec['name']}: shape must be a list of sizes", fix)
        if "range" in spec:
            r = spec["range"]
            require(list_of(r, int) and len(r) == 2 and r[0] < r[1], where,
                    f"{spec['name']}: range must be [low, high) integers", fix)
    return data


def validate_supernet_spec(spec: Any, where: str) -> None:
    """The nested structure of a supernet spec (types, tensors, knobs) that the loader relies on."""
    fix = SUPERNET.fix

    def ok(cond: bool, problem: str) -> None:
        require(cond, where, problem, fix)

    ok(list_of(spec.dense, str), "dense must be a list of parameter names")
    ok(all(isinstance(k, str) and list_of(v, int) for k, v in spec.tensors.items()),
       "tensors must map names to shapes (lists of integers)")
    for t in spec.types:
        ok(isinstance(t.name, str) and isinstance(t.kind, str), "every type needs a name and a kind")
        ok(is_type(t.m1, int) and is_type(t.m2, int) and t.m1 > 0 and t.m2 > 0, f"type {t.name}: m1, m2 must be > 0")
        ok(is_type(t.max_rank, int) and t.max_rank > 0, f"type {t.name}: max_rank must be a positive integer")
        ok(list_of(t.rank_options, int) and all(0 < r <= t.max_rank for r in t.rank_options),
           f"type {t.name}: rank_options must be integers in 1..max_rank")
        ok(t.kernel_size is None or list_of(t.kernel_size, int), f"type {t.name}: kernel_size must be integers")
        ok(dict_of(t.reconstruction_error, Number), f"type {t.name}: reconstruction_error must be numbers")
        ok(isinstance(t.source_top, bool), f"type {t.name}: source_top must be true/false")
        if t.source_top is True and list_of(t.rank_options, int):
            ok(len(t.rank_options) >= 2 and max(t.rank_options) == t.max_rank,
               f"type {t.name}: source_top needs a factor rank option below max_rank and max_rank itself")
            ok(not spec.tensors or all(f"source.{m.get('name')}" in spec.tensors for m in t.matrices
                                       if isinstance(m, dict)),
               f"type {t.name}: source_top but a source.<matrix> tensor is not listed")
        ok(isinstance(t.matrices, list) and all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("parts"), list) and all(
                isinstance(p, dict) and isinstance(p.get("module"), str) and list_of(p.get("rows"), int)
                and len(p["rows"]) == 2 for p in m["parts"])
            for m in t.matrices), f"type {t.name}: matrices must be [{{name, parts: [{{module, rows}}]}}]")
    knobs = spec.widths.get("knobs")
    ok(knobs is None or (isinstance(knobs, dict) and all(list_of(v, int) for v in knobs.values())),
       "widths.knobs must map knob names to lists of widths")
    opts = spec.depth.get("options")
    ok(opts is None or list_of(opts, int), "depth.options must be a list of integers")
    ok(spec.depth.get("full") is None or is_type(spec.depth.get("full"), int), "depth.full must be an integer")
    ok(isinstance(spec.weights_sha256, str), "weights_sha256 must be a string")
    pipe = spec.pipeline
    ok(isinstance(pipe, dict), "pipeline must be an object")
    if pipe:
        comps = pipe.get("components")
        ok(isinstance(pipe.get("class"), str) and isinstance(pipe.get("denoiser"), str),
           "pipeline needs its class and denoiser folder")
        ok(isinstance(comps, dict) and all(isinstance(v, dict) and isinstance(v.get("class"), str)
                                           and dict_of(v.get("files"), str) for v in comps.values()),
           "pipeline.components must map names to {class, files: {path: sha256}, ...}")
        ok(all("/" not in k and not k.startswith(".") for k in comps)
           and all(".." not in f.split("/") and not f.startswith("/") for v in comps.values() for f in v["files"]),
           "pipeline component names and files must stay inside the supernet directory")
