"""What a simulated worker is: a GPU (memory, PCIe) and a model (KV bytes per token, weights).

Capacity is what SGLang gives a worker: the static memory fraction of every GPU of the worker,
less the weights, is the KV pool; the rest is left to activations and the runtime. Figures are
the vendors' datasheet numbers (memory, PCIe 5.0/6.0 x16 one direction).
"""

from __future__ import annotations

from dataclasses import dataclass

MEM_FRACTION_STATIC = 0.88  # of each GPU's memory: weights + KV pool (SGLang's default near 80 GB)
DEFAULT_STORAGE_GBPS = 10.0  # L3 (shared store) read bandwidth per worker, GB/s


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    pcie_bytes_per_s: float  # host <-> GPU, one direction


@dataclass(frozen=True)
class SimModelSpec:
    name: str  # the Hugging Face id (what aiconfigurator-core compiles)
    num_layers: int
    num_kv_heads: int
    head_dim: int
    params: float  # weights, in parameters
    context_length: int
    dtype_bytes: int = 2  # bf16
    aic_name: str = ""  # the name aiconfigurator-core ships its config under, where it differs

    @property
    def perf_name(self) -> str:
        return self.aic_name or self.name

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes


GIB = 1 << 30
GPUS = {g.name: g for g in (
    Gpu("h100_sxm", 80 * GIB, 64e9),
    Gpu("h200_sxm", 141 * 10**9, 64e9),
    Gpu("b200_sxm", 180 * 10**9, 128e9),
)}

MODELS = {m.name: m for m in (
    SimModelSpec("Qwen/Qwen3-8B", 36, 8, 128, 8.19e9, 40960),
    SimModelSpec("meta-llama/Llama-3.1-8B", 32, 8, 128, 8.03e9, 131072, aic_name="meta-llama/Meta-Llama-3.1-8B"),
    SimModelSpec("meta-llama/Llama-3.1-70B", 80, 8, 128, 70.6e9, 131072, aic_name="meta-llama/Meta-Llama-3.1-70B"),
)}


def lookup(gpu: str, model: str) -> tuple[Gpu, SimModelSpec]:
    if gpu not in GPUS:
        raise ValueError(f"unknown --gpu {gpu!r}; choose one of {', '.join(sorted(GPUS))}")
    if model not in MODELS:
        raise ValueError(f"unknown sim --model {model!r}; choose one of {', '.join(sorted(MODELS))}")
    return GPUS[gpu], MODELS[model]


def kv_capacity_tokens(gpu: Gpu, model: SimModelSpec, tp: int) -> int:
    """Tokens of KV a worker of `tp` GPUs holds: the static fraction of their memory less the weights
    (split over the GPUs), at the model's KV bytes per token (split over the GPUs alike)."""
    free = tp * gpu.memory_bytes * MEM_FRACTION_STATIC - model.weight_bytes
    if free <= 0:
        raise ValueError(f"{model.name} ({model.weight_bytes / GIB:.0f} GiB of weights) does not fit on "
                         f"{tp} x {gpu.name}; raise --tp")
    return int(free // model.kv_bytes_per_token)
