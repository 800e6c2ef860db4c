"""A supernet as one trainable nn.Module: any subnet's forward pass, differentiable in the factors.

Each step folds W_l = U_t[:, :r] · diag(σ_l[:r]) · V_t[:, :r]ᵀ for the chosen ranks, picks the chosen
depth (σ interpolated along depth, as `Supernet.subnet` does) and index-selects the chosen widths
(OFA-Diffusion orders), then runs a *stock* diffusers module of that shape through
`torch.func.functional_call`. Gradients therefore reach U, V, σ and the dense parameters of the one
supernet whatever subnet ran, which is what FINE pre-training, OFA nested training and σ-only
retraining all need; and the module that runs is exactly the one `subnet()` / export build.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import SubnetConfig, Supernet, basis_names, layer_weight, source_name


def _key(name: str) -> str:
    return name.replace(".", "__")


def model_inputs(adapter: Any, config: dict[str, Any], noisy: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor | None) -> dict[str, Any]:
    """The backbone's keyword inputs for a training step: class labels where it is class-conditional (no label:
    the null class, i.e. unconditional)."""
    n_cls = adapter.num_classes(config)
    cond = None
    if n_cls:
        lab = labels if labels is not None else torch.full((noisy.shape[0],), n_cls, dtype=torch.long)
        cond = {"class_labels": lab.to(noisy.device)}
    return adapter.forward_kwargs(noisy, t, cond)


class TrainableSupernet(nn.Module):
    """U, V, σ and dense parameters of a supernet as parameters; `loss(...)` runs any subnet."""

    def __init__(self, sn: Supernet, scheduler_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        if sn.adapter.objective != "epsilon":  # the loss below is ε-prediction MSE under a DDPM schedule
            raise FineDeployError(f"training a {sn.spec.backbone} ({sn.adapter.objective} objective) is not "
                                  "supported yet; plan and export it, or train an ε-prediction backbone")
        if sn.adapter.conditioning == "text":  # the data loaders read images and class labels only
            raise FineDeployError(f"training a {sn.spec.backbone} needs prompt embeddings, which fine-deploy's "
                                  "training does not read yet; plan and export it as converted")
        self.spec = sn.spec
        self.bases = nn.ParameterDict()
        self.sigmas = nn.ParameterDict()
        self.dense = nn.ParameterDict()
        for t in sn.types:
            u, v = basis_names(t.name)
            self.bases[_key(u)] = nn.Parameter(sn.tensors[u].detach().clone().float())
            self.bases[_key(v)] = nn.Parameter(sn.tensors[v].detach().clone().float())
            for m in t.matrices:
                self.sigmas[_key(m["name"])] = nn.Parameter(sn.tensors[f"sigma.{m['name']}"].detach().clone().float())
        for name in sn.spec.dense:
            self.dense[_key(name)] = nn.Parameter(sn.tensors[f"dense.{name}"].detach().clone().float())
        # a converted type's exact top option: the source weights, carried along but never trained
        self._sources = [m["name"] for t in sn.types if t.source_top for m in t.matrices]
        for name in self._sources:
            self.register_buffer(f"source__{_key(name)}", sn.tensors[source_name(name)].detach().clone().float())
        self.noise_scheduler = DDPMScheduler(**(scheduler_config or {"num_train_timesteps": 1000}))
        self.active = SubnetConfig()
        self.adapter = sn.adapter
        # The supernet's depth layouts (where each subnet parameter comes from), over this module's own
        # parameters (no copy). Skeletons are plain attributes, not submodules: their weights are never trained.
        self._layouts = Supernet(self.spec, {f"dense.{n}": self.dense[_key(n)] for n in self.spec.dense})
        self._skeletons: dict[tuple, nn.Module] = {}
        self._index_maps: dict[tuple, dict[str, dict[int, torch.Tensor]]] = {}

    # --- knobs ------------------------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        return self.spec.backbone

    @property
    def full_depth(self) -> int | None:
        return self.spec.depth.get("full")

    @property
    def class_conditional(self) -> bool:
        return bool(self.adapter.num_classes(self.spec.config))

    def _depth(self, config: SubnetConfig) -> int | None:
        return None if config.depth is None or config.depth == self.full_depth else int(config.depth)

    def _widths(self, config: SubnetConfig) -> tuple[tuple[str, int], ...]:
        knobs = self.spec.widths.get("knobs") or {}
        return tuple(sorted((k, int(w)) for k, w in config.widths.items() if w != max(knobs[k])))

    def _skeleton(self, depth: int | None, widths: tuple[tuple[str, int], ...]) -> nn.Module:
        key = (depth, widths)
        if key not in self._skeletons:
            if widths:
                full = self._skeleton(depth, ())
                model = self.adapter.slice_widths(full, dict(widths), self.spec.widths["orders"])
            else:
                model = self.adapter.build(self.spec.config, depth)
            ref = next(self.parameters())
            model = model.to(ref.device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._skeletons[key] = model
        return self._skeletons[key]

    def invalidate(self) -> None:
        """Forget cached skeletons and index maps (after the channel orders changed)."""
        self._skeletons.clear()  # layouts stay: they depend on depth and types, not on channel orders
        self._index_maps.clear()

    # --- the differentiable subnet ------------------------------------------------------------------
    def sigma(self, matrix: str) -> nn.Parameter:
        return self.sigmas[_key(matrix)]

    def basis(self, type_name: str) -> tuple[nn.Parameter, nn.Parameter]:
        u, v = basis_names(type_name)
        return self.bases[_key(u)], self.bases[_key(v)]

    def state(self, config: SubnetConfig) -> dict[str, torch.Tensor]:
        """Parameters of the subnet's stock module, as functions of the supernet's parameters."""
        depth = self._depth(config)
        layout = self._layouts.layout(depth)
        out = {name: self.dense[_key(src)] for name, src in layout.dense}
        kinds = {t.name: t for t in self.spec.types}
        tensors = self._factor_view()
        for ms in layout.matrices:
            t = kinds[ms.type]
            W = layer_weight(tensors, t, ms.sigma, int(config.ranks.get(t.name, t.max_rank)))
            for module, a, b in ms.parts:
                w = W[a:b]
                if t.kind == "conv":
                    w = w.reshape(b - a, -1, *t.kernel_size)
                out[f"{module}.weight"] = w
        widths = self._widths(config)
        if widths:
            key = (depth, widths)
            if key not in self._index_maps:
                self._index_maps[key] = self.adapter.width_index_map(self._skeleton(depth, ()), dict(widths),
                                                                     self.spec.widths["orders"])
            for name, dims in self._index_maps[key].items():
                if name in out:
                    w = out[name]
                    for dim, idx in dims.items():
                        w = w.index_select(dim, idx.to(w.device))
                    out[name] = w
        return out

    def _factor_view(self) -> dict[str, torch.Tensor]:
        """This module's factors (and source weights) under the supernet's tensor names: what layer_weight reads."""
        out: dict[str, torch.Tensor] = {}
        for t in self.spec.types:
            u, v = basis_names(t.name)
            out[u], out[v] = self.basis(t.name)
            for m in t.matrices:
                out[f"sigma.{m['name']}"] = self.sigma(m["name"])
        for name in self._sources:
            out[source_name(name)] = getattr(self, f"source__{_key(name)}")
        return out

    def model_inputs(self, noisy: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        return model_inputs(self.adapter, self.spec.config, noisy, t, labels)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                config: SubnetConfig | None = None) -> torch.Tensor:
        config = config or self.active
        model = self._skeleton(self._depth(config), self._widths(config))
        return functional_call(model, self.state(config), args=(), kwargs=self.model_inputs(noisy, t, labels)).sample

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising (ε-prediction) loss of the active subnet: what DDP wraps and accelerate launches."""
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.predict(noisy, t, labels)
        return F.mse_loss(pred.float(), noise.float())

    # --- back to a Supernet ------------------------------------------------------------------------
    @torch.no_grad()
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.spec.types:
            u, v = basis_names(t.name)
            out[u], out[v] = (p.detach().cpu().clone().contiguous() for p in self.basis(t.name))
            for m in t.matrices:
                out[f"sigma.{m['name']}"] = self.sigma(m["name"]).detach().cpu().clone().contiguous()
        for name in self.spec.dense:
            out[f"dense.{name}"] = self.dense[_key(name)].detach().cpu().clone().contiguous()
        for name in self._sources:
            out[source_name(name)] = getattr(self, f"source__{_key(name)}").detach().cpu().clone().contiguous()
        return out

    def to_supernet(self) -> Supernet:
        return Supernet(copy.deepcopy(self.spec), self.tensors())

    @torch.no_grad()
    def dense_module(self, config: SubnetConfig | None = None) -> nn.Module:
        """A stock module (own copy of the weights) of a subnet: what importance and sampling use."""
        config = config or SubnetConfig()
        model = copy.deepcopy(self._skeleton(self._depth(config), self._widths(config)))
        model.load_state_dict({k: v.detach().clone() for k, v in self.state(config).items()}, strict=False)
        for p in model.parameters():  # a free-standing copy: gradient importance differentiates it
            p.requires_grad_(True)
        return model.eval()

    @torch.no_grad()
    def reorder_ranks(self) -> None:
        """Unit-norm basis columns with the scale in σ, columns sorted by Σ_l σ_l[i]²·‖u_i‖²‖v_i‖².

        The subnet functions do not change; keeping the first r columns becomes the rank knob again
        after training moved energy between columns.
        """
        for t in self.spec.types:
            U, V = self.basis(t.name)
            nu, nv = U.norm(dim=0).clamp_min(1e-12), V.norm(dim=0).clamp_min(1e-12)
            S = torch.stack([self.sigma(m["name"]) for m in t.matrices]) * (nu * nv)
            order = torch.sort((S * S).sum(0), descending=True, stable=True).indices
            U.copy_((U / nu)[:, order])
            V.copy_((V / nv)[:, order])
            for i, m in enumerate(t.matrices):
                self.sigma(m["name"]).copy_(S[i, order])


def sigma_only(tsn: TrainableSupernet) -> list[nn.Parameter]:
    """FINE light retraining: everything frozen except the per-layer σ; returns the trainable σ."""
    for p in tsn.parameters():
        p.requires_grad_(False)
    params = list(tsn.sigmas.values())
    for p in params:
        p.requires_grad_(True)
    return params
