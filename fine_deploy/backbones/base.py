"""What every backbone adapter declares, and the helpers adapters share.

An adapter is the one place that knows a diffusers class: which of its weights share learngenes
(FINE types), which block stack the depth knob walks, whether a width knob exists, the forward inputs
(diffusers' own argument names, shapes, dtypes, integer ranges), the conditioning and its null value
for classifier-free guidance, the training objective and scheduler family, and the pipeline's other
components. Everything else in fine-deploy asks the adapter instead of branching on the class name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fine_deploy.errors import FineDeployError


@dataclass(frozen=True)
class Part:
    module: str  # dotted path of an nn.Linear / nn.Conv2d in the backbone
    rows: tuple[int, int]  # [start, stop) of this module's rows inside the stacked matrix


@dataclass(frozen=True)
class Matrix:
    name: str  # names this layer's sigma tensor: "sigma.<name>"
    parts: tuple[Part, ...]


@dataclass
class WeightType:
    """Equal-shape matrices W_l (m1 x m2; conv weights as out x in*kh*kw) that share one pair U_t, V_t."""

    name: str
    kind: str  # "linear" | "conv"
    m1: int
    m2: int
    kernel_size: tuple[int, int] | None
    matrices: list[Matrix] = field(default_factory=list)

    @property
    def layers(self) -> int:
        return len(self.matrices)

    def exact_rank(self) -> int:
        return self.layers * min(self.m1, self.m2)


# an image side beyond this many times the model's own is refused: attention cost grows with its 4th power
MAX_RESOLUTION_FACTOR = 4

Found = tuple[str, Matrix, tuple]  # (role, matrix, (kind, m1, m2, kernel_size)): one factorisable matrix


@dataclass(frozen=True)
class InputSpec:
    """One forward() input of the backbone, under diffusers' argument name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "int64" (torch side; exports narrow int64 to int32)
    range: tuple[int, int] | None = None  # [low, high) of integer inputs and of timesteps

    @property
    def is_int(self) -> bool:
        return self.dtype.startswith("int")


def module_matrix_shape(mod: nn.Module) -> tuple[str, int, int, tuple[int, int] | None]:
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise FineDeployError(f"grouped conv {mod} cannot be factorised; keep it dense")
        out, cin, kh, kw = mod.weight.shape
        return "conv", out, cin * kh * kw, (kh, kw)
    if isinstance(mod, nn.Linear):
        out, cin = mod.weight.shape
        return "linear", out, cin, None
    raise TypeError(f"not a linear/conv module: {type(mod).__name__}")


def stack(model: nn.Module, name: str, modules: list[str]) -> tuple[Matrix, tuple]:
    """One matrix from the row-wise stack of modules that read the same input (e.g. a fused q/k/v)."""
    parts, start, sig = [], 0, None
    for path in modules:
        kind, m1, m2, ks = module_matrix_shape(model.get_submodule(path))
        s = (kind, m2, ks)
        if sig is not None and s != sig:
            raise FineDeployError(f"cannot stack {modules}: parts differ in input shape; "
                                  "list them as separate matrices in the adapter")
        sig = s
        parts.append(Part(path, (start, start + m1)))
        start += m1
    return Matrix(name, tuple(parts)), (sig[0], start, sig[1], sig[2])


def attention_matrices(model: nn.Module, attn: str, prefix: str = "", base: str | None = None) -> list[Found]:
    """The projections of one diffusers `Attention`, named `<base>.<role>` (base: the attention's path).

    Self-attention stacks q/k/v (one input); cross-attention keeps q (image tokens) apart from the
    stacked k/v (text tokens, of another width). Roles get `prefix` (the stage of a UNet).
    """
    mod = model.get_submodule(attn)
    base = base or attn
    q, k, v = (f"{attn}.to_{c}" for c in "qkv")
    if getattr(mod, "is_cross_attention", False) or mod.to_k.in_features != mod.to_q.in_features:
        groups = (("cross_q", [q]), ("cross_kv", [k, v]), ("cross_out", [f"{attn}.to_out.0"]))
    else:
        groups = (("qkv", [q, k, v]), ("attn_out", [f"{attn}.to_out.0"]))
    out: list[Found] = []
    for role, mods in groups:
        m, shape = stack(model, f"{base}.{role}", mods)
        out.append((f"{prefix}{role}", m, shape))
    return out


def single(model: nn.Module, role: str, path: str, name: str | None = None) -> Found:
    """One module as its own matrix (named after its path unless `name` says otherwise)."""
    m, shape = stack(model, name or path, [path])
    return role, m, shape


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no init) and their buffers
    for real, as accelerate's init_empty_weights(include_buffers=False) does; `load_state_dict(assign=True)`
    then gives them weights. Building a 0.7B backbone this way skips seconds of random init nobody reads."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class Adapter:
    """Base of every adapter; a subclass per diffusers class, registered in `fine_deploy.backbones`."""

    class_name: ClassVar[str]
    component: ClassVar[str]  # the pipeline folder of the denoiser: "unet" | "transformer"
    sample_input: ClassVar[str]  # "sample" | "hidden_states"
    conditioning: ClassVar[str] = "none"  # "none" | "class" | "text"
    objective: ClassVar[str] = "epsilon"  # "epsilon" | "v_prediction" | "flow_matching"
    scheduler: ClassVar[str] = "DDPMScheduler"  # the training scheduler family
    pipeline: ClassVar[str | None] = None  # stock diffusers pipeline class of the whole model
    components: ClassVar[tuple[str, ...]] = ("scheduler",)  # the pipeline's other components
    depth_stack: ClassVar[str | None] = None  # block list the depth knob shortens ("transformer_blocks")
    depth_key: ClassVar[str] = "num_layers"  # config key holding its length
    latent: ClassVar[bool] = False  # denoises a VAE latent (text-to-image) rather than pixels
    width_knob: ClassVar[bool] = False  # OFA-Diffusion widths can be sliced into a stock config

    # --- the model -----------------------------------------------------------------------------------
    @classmethod
    def model_class(cls) -> type:
        import diffusers

        return getattr(diffusers, cls.class_name)

    def build(self, config: dict[str, Any], depth: int | None = None, *, empty: bool = False) -> nn.Module:
        """The stock module of `config` at `depth`; `empty`: parameters on the meta device, to be assigned."""
        if not empty:
            return self.model_class().from_config(self.subnet_config(config, depth))
        with parameters_on_meta():
            return self.model_class().from_config(self.subnet_config(config, depth))

    def subnet_config(self, config: dict[str, Any], depth: int | None = None) -> dict[str, Any]:
        """The diffusers config of a subnet: the supernet's public keys, the depth knob applied."""
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        if depth is not None:
            if not self.depth_stack:
                raise FineDeployError(f"{self.class_name} has no depth knob")
            cfg[self.depth_key] = depth
        return cfg

    def matrices(self, model: nn.Module) -> list[Found]:
        """Every factorisable matrix of the model with its role (matrices of one role and shape share bases)."""
        raise NotImplementedError

    # --- knobs ---------------------------------------------------------------------------------------
    def depth_options(self, config: dict[str, Any], steps: int = 8) -> list[int]:
        """Half depth to full depth, every value when there are at most `steps` of them, else `steps` evenly
        spaced ones (each option costs a subnet build in the quality proxy and a choice in the MILP)."""
        if not self.depth_stack:
            return []
        L = int(config[self.depth_key])
        lo = max(1, -(-L // 2))
        if L - lo + 1 <= steps:
            return list(range(lo, L + 1))
        return sorted({round(lo + i * (L - lo) / (steps - 1)) for i in range(steps)})

    def block_index(self, name: str) -> int | None:
        """Index in the depth stack of a parameter / matrix name (None outside the stack)."""
        if not self.depth_stack:
            return None
        m = re.match(rf"^{re.escape(self.depth_stack)}\.(\d+)\.", name)
        return int(m.group(1)) if m else None

    def rename_block(self, name: str, index: int) -> str:
        return re.sub(rf"^{re.escape(self.depth_stack)}\.\d+\.", f"{self.depth_stack}.{index}.", name)

    def width_section(self, model: nn.Module, calib: torch.Tensor | None, **options: Any) -> dict[str, Any]:
        """OFA-Diffusion channel orders and width knobs; {} where a stock config cannot express a slice."""
        return {}

    def slice_widths(self, model: nn.Module, widths: dict[str, int], orders: dict[str, list[int]]) -> nn.Module:
        raise FineDeployError(f"{self.class_name} has no width knob")

    def width_index_map(self, model: nn.Module, widths: dict[str, int],
                        orders: dict[str, list[int]]) -> dict[str, dict[int, torch.Tensor]]:
        raise FineDeployError(f"{self.class_name} has no width knob")

    def knob_notes(self) -> dict[str, str]:
        """Which knobs exist for this class and, for the missing ones, why (shown by `inspect`)."""
        return {"rank": "every factorised type"}

    # --- inputs --------------------------------------------------------------------------------------
    def resolution_options(self, config: dict[str, Any]) -> tuple[list[int] | None, str, int, int]:
        """(exact options or None, description, step, largest) of the sample sides this model runs at."""
        native = int(config["sample_size"])
        return [native], f"{native} only (its positional embedding is built for it)", native, native

    def strided_resolutions(self, config: dict[str, Any], step: int) -> tuple[None, str, int, int]:
        top = max(int(config["sample_size"]), step) * MAX_RESOLUTION_FACTOR
        top -= top % step
        return None, f"a multiple of {step} from {step} to {top}", step, top

    def proxy_resolution(self, config: dict[str, Any]) -> int | None:
        """Where the data-free quality proxy runs: a quarter of the side where the model takes other sizes
        (relative errors of convolutions barely move with the side; the cost falls 16x), else its own.

        At least twice the stride, so the deepest feature map keeps 2x2 values: at 1x1 a width cut to one
        channel per GroupNorm group leaves it one value to normalise, which torch refuses (a 4-stage UNet at 32 px).
        """
        exact, _, step, _ = self.resolution_options(config)
        if exact is not None:
            return None
        native = int(config["sample_size"])
        return min(max(native, step), max(2 * step, native // 4 - (native // 4) % step))

    def check_resolution(self, config: dict[str, Any], resolution: int | None, flag: str = "--resolution") -> int:
        """The sample side to use: `resolution` when the model runs at it, else one line with what is allowed."""
        if resolution is None:
            return int(config["sample_size"])
        exact, allowed, step, top = self.resolution_options(config)
        strided = step <= resolution <= top and resolution % step == 0 if isinstance(resolution, int) else False
        ok = isinstance(resolution, int) and not isinstance(resolution, bool) and (
            resolution in exact if exact is not None else strided)
        if not ok:
            raise FineDeployError(f"{flag} {resolution} is not allowed for this supernet; use {allowed}")
        return int(resolution)

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        """The forward inputs, in diffusers' argument order, with the shapes of a batch at `resolution` (and a
        text sequence of `tokens` where the backbone reads text: a converted pipeline's own length)."""
        raise NotImplementedError

    def channels(self, config: dict[str, Any]) -> int:
        return int(config["in_channels"])

    def num_classes(self, config: dict[str, Any]) -> int | None:
        return None

    def example_inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
                       seed: int = 0, tokens: int | None = None) -> dict[str, torch.Tensor]:
        """Fixed random inputs (what export, parity, shape tracing and sensitivity feed the model)."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for s in self.inputs(config, batch, resolution, tokens):
            if s.is_int:
                out[s.name] = torch.randint(s.range[0], s.range[1], s.shape, generator=g)
            else:
                out[s.name] = torch.randn(s.shape, generator=g)
        return out

    def forward_kwargs(self, x: torch.Tensor, t: torch.Tensor,
                       cond: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The keyword arguments of the backbone's forward() for a noisy batch at timesteps t."""
        return {self.sample_input: x, "timestep": t, **(cond or {})}

    def forward_kwargs_of(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """forward() keyword arguments from flat named inputs (the exported graph's interface)."""
        rest = dict(inputs)
        return self.forward_kwargs(rest.pop(self.sample_input), rest.pop("timestep"), rest)

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's output tensor for flat named inputs."""
        return model(**self.forward_kwargs_of(inputs), return_dict=False)[0]

    # --- the pipeline --------------------------------------------------------------------------------
    pipeline_file: ClassVar[str | None] = None  # a pipeline module of this package copied into diffusers exports

    def model_index(self) -> dict[str, Any] | None:
        """model_index.json of a pipeline folder made of the denoiser and a scheduler alone (None: no
        pipeline runs this denoiser without its other components)."""
        return None
