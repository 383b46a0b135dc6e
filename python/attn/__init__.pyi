# SPDX-License-Identifier: Apache-2.0
"""Type stubs for the attn package (the extension attn._attn, re-exported). See docs/python.md."""

import os
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

# A NumPy array, a PyTorch CPU tensor, or anything else exposing DLPack or convertible by
# numpy.asarray.
ArrayLike = Any
# A NumPy float32 array, or a torch.Tensor when the main input was one.
Output = Any
ConfigLike = Union[Mapping[str, Any], str, os.PathLike]
MlaForm = Literal["naive", "absorbed", "auto"]
StorageDType = Literal["f32", "f16", "bf16"]
PagedStorageDType = Literal["f32", "f16", "bf16", "fp8", "int8"]

__version__: str

class Cache:
    """A KV cache for one layer, made by Attention.new_cache()."""

    @property
    def nbytes(self) -> int: ...
    @property
    def lengths(self) -> npt.NDArray[np.int64]: ...
    @property
    def batch(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def dtype(self) -> StorageDType: ...
    @property
    def mla(self) -> Optional[MlaForm]: ...
    @property
    def bytes_per_token(self) -> int: ...
    def clear(self) -> None: ...

class PagedCache:
    """A paged KV cache for one layer, made by Attention.new_paged_cache(): a pool of pages
    shared by sequences with int ids (never reused)."""

    def add(self) -> int: ...
    def fork(self, seq: int) -> int: ...
    def free(self, seq: int) -> None: ...
    def lengths(self, seqs: Union[Sequence[int], ArrayLike]) -> List[int]: ...
    def __contains__(self, seq: object) -> bool: ...
    @property
    def free_pages(self) -> int: ...
    @property
    def pages(self) -> int: ...
    @property
    def page_size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def dtype(self) -> StorageDType: ...
    @property
    def mla(self) -> Optional[MlaForm]: ...

class Attention:
    """One attention layer of a checkpoint (GQA family or DeepSeek MLA)."""

    @staticmethod
    def from_config(
        config: ConfigLike,
        weights: Union[str, os.PathLike, Mapping[str, ArrayLike]],
        layer: int = 0,
        shard: Optional[Tuple[int, int]] = None,
    ) -> "Attention": ...
    @staticmethod
    def from_pretrained(
        directory: Union[str, os.PathLike],
        layer: int = 0,
        shard: Optional[Tuple[int, int]] = None,
    ) -> "Attention": ...
    @staticmethod
    def random(
        config: ConfigLike,
        seed: int = 0,
        layer: int = 0,
        shard: Optional[Tuple[int, int]] = None,
    ) -> "Attention": ...
    def forward(
        self,
        hidden_states: ArrayLike,
        position_ids: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
        mla: MlaForm = "auto",
        lengths: Optional[ArrayLike] = None,
    ) -> Output: ...
    def prefill_then_decode(
        self,
        hidden_states: ArrayLike,
        prefill_tokens: int,
        position_ids: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
        mla: MlaForm = "auto",
        cache_dtype: StorageDType = "f32",
    ) -> Output: ...
    def new_cache(
        self, batch: int, capacity: int, dtype: StorageDType = "bf16", mla: MlaForm = "auto"
    ) -> Cache: ...
    def prefill(
        self,
        hidden_states: ArrayLike,
        cache: Cache,
        position_ids: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
        lengths: Optional[ArrayLike] = None,
    ) -> Output: ...
    def decode(
        self,
        hidden_states: ArrayLike,
        cache: Cache,
        position_ids: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
    ) -> Output: ...
    def new_paged_cache(
        self,
        pages: int,
        page_size: int = 64,
        dtype: PagedStorageDType = "bf16",
        mla: MlaForm = "auto",
    ) -> PagedCache: ...
    def step(
        self,
        hidden_states: ArrayLike,
        cache: PagedCache,
        seqs: Union[Sequence[int], ArrayLike],
        counts: Union[Sequence[int], ArrayLike],
        position_ids: Optional[ArrayLike] = None,
        attention_mask: Optional[ArrayLike] = None,
    ) -> Output: ...
    def kv_bytes_per_token(self, dtype: StorageDType = "bf16", mla: MlaForm = "auto") -> int: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def layer(self) -> int: ...
    @property
    def shard(self) -> Optional[Tuple[int, int]]: ...

def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    causal: bool = True,
    scale: Optional[float] = None,
    attention_mask: Optional[ArrayLike] = None,
    window: int = 0,
    out: Optional[ArrayLike] = None,
    check_finite: bool = True,
    alibi_slopes: Optional[ArrayLike] = None,
    chunk: int = 0,
    query_offset: int = -1,
    softcap: float = 0.0,
    sinks: Optional[ArrayLike] = None,
) -> Output: ...
def mla_attention(
    q: ArrayLike,
    kv: ArrayLike,
    value_dim: int,
    causal: bool = True,
    scale: Optional[float] = None,
    attention_mask: Optional[ArrayLike] = None,
    out: Optional[ArrayLike] = None,
    check_finite: bool = True,
    query_offset: int = -1,
) -> Output: ...
def random_weights(
    config: ConfigLike, seed: int = 0, layer: int = 0
) -> Dict[str, npt.NDArray[np.float32]]: ...
def save_random_weights(
    path: Union[str, os.PathLike],
    config: ConfigLike,
    seed: int = 0,
    layer: int = 0,
    dtype: Literal["f32", "f16", "bf16", "fp8"] = "f32",
    config_output: Optional[Union[str, os.PathLike]] = None,
) -> None: ...
def load_attention_layers(
    directory: Union[str, os.PathLike],
    layers: Optional[Sequence[int]] = None,
    shard: Optional[Tuple[int, int]] = None,
) -> List[Attention]: ...
def load_safetensors(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]: ...
def backend() -> str: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def info(
    config: ConfigLike,
    context: Union[int, str, None] = None,
    batch: int = 1,
    dtype: StorageDType = "bf16",
    memory: Union[float, str, None] = None,
) -> Dict[str, Any]: ...
def presets() -> list[str]: ...

__all__: list[str]

# With PyTorch (loaded on first use; `import attn` does not import torch): the torch operators
# (attn.ops) and the SDPA-compatible entry point.
from attn import ops as ops
from attn.ops import scaled_dot_product_attention as scaled_dot_product_attention
