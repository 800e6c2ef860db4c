"""TensorRT sessions: deserialize (or build from ONNX) an engine and run it with execute_async_v3.

Device buffers are torch CUDA tensors, so no extra CUDA binding package is needed. ``time_runs``
binds the feeds on the device once and times enqueue + stream synchronise only, which is what a
sampler loop that keeps its latents on the GPU pays per step; ``run`` includes the host copies.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.session import Session
from fine_deploy.runtime.spec import SessionOptions, TensorSpec


def _require_cuda() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        import torch
    except ImportError as e:
        raise FineDeployError(
            f"the tensorrt backend needs {e.name}; pip install 'fine-deploy[trt]' on a GPU machine"
        ) from None
    if not torch.cuda.is_available():
        raise FineDeployError(
            "the tensorrt backend needs an NVIDIA GPU and none is visible; use --backend onnxruntime-cpu"
        )
    return trt, torch


def build_engine(
    onnx_path: Path,
    shapes: dict[str, tuple[int, ...]] | None = None,
    fp16: bool = False,
    workspace_bytes: int = 4 << 30,
) -> bytes:
    """Serialized TensorRT engine for an ONNX file. Dynamic inputs get a one-point optimisation
    profile at ``shapes`` (min = opt = max), the shapes the benchmark will run."""
    trt, _ = _require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FineDeployError(
            f"TensorRT cannot parse {onnx_path.name}: {errors}; re-export with a supported opset"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = [
        network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = (shapes or {}).get(tensor.name)
            if shape is None:
                raise FineDeployError(
                    f"input {tensor.name} of {onnx_path.name} is dynamic; "
                    f"pass --shape {tensor.name}=... to build a TensorRT engine"
                )
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FineDeployError(
            f"TensorRT failed to build an engine for {onnx_path.name}; see the TensorRT log above"
        )
    return bytes(serialized)


class TrtSession(Session):
    def __init__(
        self,
        model: Path,
        options: SessionOptions,
        declared_shapes: dict[str, tuple[int, ...]] | None = None,
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        trt, torch = _require_cuda()
        self._trt, self._torch = trt, torch
        self.model_path = model
        self.options = options
        self.backend = "tensorrt"
        self.declared_shapes = dict(declared_shapes or {})
        if model.suffix == ".onnx":
            data = build_engine(model, {**self.declared_shapes, **(shapes or {})})
        else:
            data = model.read_bytes()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise FineDeployError(
                f"TensorRT {trt.__version__} cannot deserialize {model.name}; engines are tied to the "
                "TensorRT version and GPU that built them: rebuild it with fine-deploy export --format trt"
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self.inputs, self.outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dims = tuple(
                int(d) if d >= 0 else f"dim{j}" for j, d in enumerate(self._engine.get_tensor_shape(name))
            )
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            spec = TensorSpec(name, dims, dtype)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)
        self.providers = ["TensorRT"]
        self._bound: dict[str, Any] = {}

    def _bind(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Copy inputs to the device, allocate outputs, and point the context at them."""
        torch = self._torch
        bound: dict[str, Any] = {}
        for spec in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[spec.name])).to("cuda")
            self._context.set_input_shape(spec.name, tuple(t.shape))
            self._context.set_tensor_address(spec.name, t.data_ptr())
            bound[spec.name] = t
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            torch_dtype = torch.from_numpy(np.empty(0, dtype=spec.dtype)).dtype
            t = torch.empty(shape, dtype=torch_dtype, device="cuda")
            self._context.set_tensor_address(spec.name, t.data_ptr())
            bound[spec.name] = t
        self._bound = bound  # keep the buffers alive while the context points at them
        return bound

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise FineDeployError(
                f"TensorRT failed to execute {self.model_path.name}; see the TensorRT log above"
            )
        self._stream.synchronize()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bound = self._bind(feeds)
        self._execute()
        return {spec.name: bound[spec.name].cpu().numpy() for spec in self.outputs}

    def time_runs(self, feeds: dict[str, np.ndarray], runs: int) -> np.ndarray:
        self._bind(feeds)
        times = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            t0 = time.perf_counter()
            self._execute()
            times[i] = time.perf_counter() - t0
        return times

    def peak_device_memory(self) -> int:
        return int(self._torch.cuda.max_memory_allocated()) + int(self._engine.device_memory_size)

    def versions(self) -> dict[str, str | None]:
        return {"tensorrt": self._trt.__version__, "cuda": self._torch.version.cuda}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["device"] = self._torch.cuda.get_device_name()
        d["timing"] = "device-resident inputs; enqueue + stream synchronize"
        return d

    def close(self) -> None:
        self._bound = {}
        self._context = None
        self._engine = None
