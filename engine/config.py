"""Engine configuration: one frozen dataclass, plus the CPU-driven dtype choice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

BLOCK_SIZE = 16  # tokens per KV block; the unit of caching, hashing and events


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family model, read from its config.json."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position: int
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        if cfg.get("model_type") not in ("llama", "mistral", "qwen2") and "Llama" not in str(cfg.get("architectures")):
            raise ValueError(f"unsupported model type {cfg.get('model_type')!r}: a Llama-family model is needed")
        heads = cfg["num_attention_heads"]
        rope = cfg.get("rope_parameters") or {}
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        eos = cfg.get("eos_token_id")
        gen_cfg = Path(model_dir) / "generation_config.json"
        if gen_cfg.is_file():
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id", eos)
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            rope_theta=float(theta),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_ids=eos_ids,
        )

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        # K and V, every layer: 2 × layers × kv_heads × head_dim elements.
        elem = torch.tensor([], dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return any(f in flags for f in ("avx512_bf16", "amx_bf16")) or torch.backends.cpu.get_cpu_capability() in (
        "AVX512_BF16",
        "AMX",
    )


def choose_dtype(requested: str = "auto", device: str = "cpu") -> torch.dtype:
    """The compute dtype: the user's choice, else bf16 only on CPUs with native bf16.

    On AVX2-only CPUs bf16 matmuls run ~100x slower than fp32, and dynamic int8
    (torch.ao quantize_dynamic) sent this model's output off-topic even
    with the LM head kept in fp32, so fp32 is the default there.
    On a GPU, bf16.
    """
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if requested != "auto":
        if requested not in names:
            raise ValueError(f"unknown dtype {requested!r}; choose auto, float32, bfloat16 or float16")
        return names[requested]
    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


# Tokens per forward step when --max-batch-tokens is not given. A step is what every running request waits
# for, so on a CPU it is kept short: a thread's prefill speed hardly depends on the chunk, so 256 tokens per
# thread keep a step near half a second where 2048 made it 4 s, and cost no throughput (BENCHMARKS.md
# "Design measurements"). A GPU runs 2048 tokens in a fraction of that.
# With two threads the short chunks cost ~10% of a lone prompt's prefill speed, and a prefill with no other
# request in the engine delays nobody, so by default such a lone prefill takes steps of SOLO_STEP_TOKENS.
CPU_STEP_TOKENS_PER_THREAD = 256
GPU_STEP_TOKENS = 2048
SOLO_STEP_TOKENS = 2048


# Prefetch prefill tokens a step may carry beside other requests' work (--prefetch-chunk-tokens). On a GPU a
# decode step is bound by reading the weights, and a 128-token chunk rides along nearly free (SGLang mixes
# chunked prefill into decode batches for that reason). On a CPU one prefill token costs about what a whole
# decode row does, so a 128-token chunk made a decode step ~3x longer and every running call waited for it:
# there a prefetch computes only in steps that nothing else needs (0), and restores from L2/L3 regardless.
GPU_PREFETCH_CHUNK_TOKENS = 128
CPU_PREFETCH_CHUNK_TOKENS = 0


def default_prefetch_chunk(device: str) -> int:
    return GPU_PREFETCH_CHUNK_TOKENS if str(device).startswith("cuda") else CPU_PREFETCH_CHUNK_TOKENS


def default_batch_tokens(device: str, threads: int) -> tuple[int, int]:
    """(tokens per step, tokens per step for a prefill alone in the engine) when --max-batch-tokens is not given."""
    if str(device).startswith("cuda"):
        return GPU_STEP_TOKENS, GPU_STEP_TOKENS
    return CPU_STEP_TOKENS_PER_THREAD * max(threads, 1), SOLO_STEP_TOKENS


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to start; built once from the command line."""

    model_path: str
    dtype: str = "auto"
    device: str = "cpu"
    threads: int = 0  # 0: all cores
    matmul_backend: str = "auto"  # auto | numpy | torch (see engine/model/linear.py)
    max_batch_tokens: int = 0  # tokens per forward step (decode + prefill chunks); 0: default_batch_tokens
    max_running_requests: int = 64
    kv_pool_tokens: int = 0  # 0: sized from kv_memory_gb
    kv_memory_gb: float = 2.0
    block_size: int = BLOCK_SIZE
    enable_prefix_cache: bool = True
    context_length: int = 0  # 0: the model's own
    served_model_name: str = ""
    speculative_algorithm: str = "none"  # none | ngram
    speculative_num_draft_tokens: int = 8  # most draft tokens verified per step
    seed: int = 0
    # -- KV tiers (engine/kvcache/tiered.py) --
    l2_blocks: int = -1  # host-RAM blocks; -1: twice the L1 pool, 0: no L2
    l2_write_through: bool = False  # copy blocks to L2 when cached (default: when evicted from L1)
    l3: str = "none"  # "dir:PATH" | "none"
    l3_max_gb: float = 8.0
    l3_write_through: bool = True  # write blocks to L3 when cached (default), or only when L2 drops them
    max_pinned_fraction: float = 0.5  # of the L1 pool
    prefetch_chunk_tokens: int = -1  # most prefetch tokens per step beside others' work; -1: the device's default
    max_background_running: int = 2  # prefetches prefilling at once
    low_priority_chunk_tokens: int = 128  # most prefill tokens per step for calls below the top priority
    step_trace: str = ""  # a file to append each step's make-up to (engine/trace.py); "": none

    def num_blocks(self, model: ModelConfig, dtype: torch.dtype) -> int:
        if self.kv_pool_tokens > 0:
            tokens = self.kv_pool_tokens
        else:
            tokens = int(self.kv_memory_gb * (1 << 30) // model.kv_bytes_per_token(dtype))
        return max(2, -(-tokens // self.block_size))

    def num_l2_blocks(self, model: ModelConfig, dtype: torch.dtype) -> int:
        return 2 * self.num_blocks(model, dtype) if self.l2_blocks < 0 else self.l2_blocks
