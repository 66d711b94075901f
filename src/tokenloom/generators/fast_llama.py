"""A lean Llama forward for decoding over an HF ``LlamaModel``'s own weights, with a preallocated KV cache.

At the sizes tokenloom decodes on a CPU (10-20M parameters), an HF decoding step spends about as long in Python
and per-op dispatch (``DynamicCache`` concatenation, mask building, rotary recomputation) as in its matmuls. This
path does the same math in fewer ops: q/k/v projections fused into one matmul, a cos/sin table computed once,
RoPE written in place, keys and values written into a `KVCache` preallocated per batch (one copy per layer),
PyTorch SDPA (grouped-query heads through ``enable_gqa``), and the padding mask read from the caller's buffer.

    fast = FastLlama.for_backbone(backbone)                         # None when the backbone is not supported
    cache = fast.new_cache(batch_size, capacity)
    hidden_BLD = fast(ids_BL, cache, start, valid_BT, positions_BL)  # tokens [start, start + L)
    hidden_BLD = fast(None, cache, start, None, positions_BL, inputs_embeds_BLD=x_BLD, causal=False)  # a scale

Kernels: "aten" runs the matmuls HF runs (on a CPU, unpadded rows give HF's hidden states bit for bit);
"onednn" (the default for float32 on a CPU) runs the projections through oneDNN with the SiLU, the gate product
and the residual adds fused into them: 1.2-1.8x faster matmuls on the AMD EPYC we measure on (PyTorch's MKL
runs its AVX2 kernels there, oneDNN AVX-512). Both stay within float32 rounding of HF (~1e-6), and greedy
decoding gives HF's ids in our tests and benchmark. `unsupported_reason` lists what falls back to HF.
Shapes: B batch, L new tokens, T cache capacity, D width, H query heads, K key/value heads, d head width.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Rotary types whose frequencies do not change with the sequence length ("dynamic" and "longrope" do).
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# "auto" takes the fast path only below this many parameter bytes: past it the matmuls dominate a step, and the
# fused q/k/v copy would cost real memory.
FAST_BYTES_LIMIT = 1 << 30
# The kernels `FastLlama.for_backbone` builds with: "auto", "aten" or "onednn" (see `FastLlama`).
KERNELS = "auto"

_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> (weights signature, FastLlama)


def unsupported_reason(backbone: nn.Module) -> str | None:
    """Why `FastLlama` cannot run ``backbone`` (None when it can)."""
    from transformers import LlamaModel

    if type(backbone) is not LlamaModel:
        return f"the backbone is a {type(backbone).__name__}, not a LlamaModel"
    config = backbone.config
    if config._attn_implementation != "sdpa":
        return f"attn_implementation={config._attn_implementation!r}; the fast path reproduces 'sdpa' only"
    if config.hidden_act != "silu":
        return f"hidden_act={config.hidden_act!r}; the fast path runs SiLU MLPs only"
    if getattr(config, "pretraining_tp", 1) > 1:
        return "pretraining_tp > 1 splits the projections; the fast path does not"
    rope_type = getattr(backbone.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope_type={rope_type!r} changes its frequencies with the length; use one of {STATIC_ROPE_TYPES}"
    if len(backbone.layers) != config.num_hidden_layers:
        return "the backbone runs fewer layers than it holds"
    return None


class KVCache:
    """Per layer one (B, 2K, T, d) tensor, keys then values, allocated once and written in place; the first
    ``length`` of T positions are valid. Answers ``get_seq_length`` and ``crop`` like HF's caches."""

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, like: torch.Tensor):
        self.kv_heads = kv_heads
        self.layers = [like.new_empty(batch, 2 * kv_heads, capacity, head_dim) for _ in range(layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.layers[0].shape[2]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (negative: drop that many from the end), as HF's ``crop``."""
        self.length = max(self.length + max_length, 0) if max_length < 0 else min(self.length, max_length)

    def reserve(self, capacity: int) -> None:
        """Grow to hold ``capacity`` tokens (at least doubling, so appends stay amortised O(1))."""
        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)
        for i, old in enumerate(self.layers):
            self.layers[i] = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            self.layers[i][:, :, : self.length] = old[:, :, : self.length]


@dataclass
class _Layer:
    input_norm: torch.Tensor  # (D,)
    qkv: torch.Tensor  # ((H + 2K) d, D): the q, k, v projections stacked (a copy)
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (D, H d)
    out_bias: torch.Tensor | None
    post_norm: torch.Tensor  # (D,)
    gate: torch.Tensor  # (I, D)
    gate_bias: torch.Tensor | None
    up: torch.Tensor  # (I, D)
    up_bias: torch.Tensor | None
    down: torch.Tensor  # (D, I)
    down_bias: torch.Tensor | None
    gate_up: torch.Tensor | None = None  # (2I, D) stacked, for the aten kernels (a copy)
    gate_up_bias: torch.Tensor | None = None


class AtenKernels:
    """The projections as HF runs them (any device)."""

    name = "aten"

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def add_linear(self, residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
        return residual + F.linear(x, weight, bias)

    def gated(self, x_ND: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gate_NI, up_NI = F.linear(x_ND, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        return F.silu(gate_NI) * up_NI


class OneDNNKernels(AtenKernels):
    """The projections through oneDNN (``torch.ops.mkldnn._linear_pointwise``, float32 on a CPU), with the SiLU,
    the gate product and the residual add fused into the matmuls."""

    name = "onednn"

    def __init__(self) -> None:
        self._op = torch.ops.mkldnn._linear_pointwise

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self._op(x, weight, bias, "none", [], "")

    def add_linear(self, residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
        return self._op.binary(x, residual, weight, bias, "add")

    def gated(self, x_ND: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gate_NI = self._op(x_ND, layer.gate, layer.gate_bias, "swish", [], "")
        return self._op.binary(x_ND, gate_NI, layer.up, layer.up_bias, "mul")

    @classmethod
    def works_for(cls, weight: torch.Tensor) -> bool:
        """oneDNN is there, the weights are float32 on a CPU, and the fused ops give what the plain ones give."""
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
            return False
        try:
            kernels, x, w = cls(), torch.randn(3, 8), torch.randn(5, 8)
            with torch.no_grad():
                fused = kernels.add_linear(x[:, :5], x, w), kernels.linear(x, w)
            return all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused, (x[:, :5] + x @ w.T, x @ w.T)))
        except (RuntimeError, AttributeError):  # a build without the op
            return False


class FastLlama:
    """The decoding forward of one HF ``LlamaModel`` (see the module doc).

    kernels: "auto" (oneDNN for float32 on a CPU where it works, else aten), "aten" or "onednn".
    """

    def __init__(self, backbone: nn.Module, kernels: str = "auto") -> None:
        reason = unsupported_reason(backbone)
        if reason is not None:
            raise ValueError(f"FastLlama cannot run this backbone: {reason}; decode with backend='hf'")
        config, attention = backbone.config, backbone.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.eps = config.rms_norm_eps
        self.embedding = backbone.embed_tokens.weight.detach()
        self.norm = backbone.norm.weight.detach()
        self.kernels = _kernels(kernels, self.embedding)
        self.layers = [_fuse(layer, with_gate_up=self.kernels.name == "aten") for layer in backbone.layers]
        self.inv_freq = backbone.rotary_emb.inv_freq.float()
        self.attention_scaling = float(backbone.rotary_emb.attention_scaling)
        self.rope_P2d = self.embedding.new_empty(0, 2, self.head_dim)

    @classmethod
    def for_backbone(cls, backbone: nn.Module, check_size: bool = True) -> FastLlama | None:
        """The (cached) fast path of ``backbone`` with the module's `KERNELS`, rebuilt when its weights change;
        None when unsupported (or, with ``check_size``, past `FAST_BYTES_LIMIT`)."""
        if unsupported_reason(backbone) is not None:
            return None
        params = list(backbone.parameters())
        if check_size and sum(p.numel() * p.element_size() for p in params) > FAST_BYTES_LIMIT:
            return None
        signature = (KERNELS, *((p.data_ptr(), p._version, p.dtype) for p in params))
        cached = _FAST.get(backbone)
        if cached is None or cached[0] != signature:
            with torch.no_grad():
                cached = (signature, cls(backbone, KERNELS))
            _FAST[backbone] = cached
        return cached[1]

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return KVCache(len(self.layers), batch_size, self.kv_heads, self.head_dim, capacity, self.embedding)

    def __call__(
        self,
        ids_BL: torch.Tensor | None,
        cache: KVCache,
        start: int,
        valid_BT: torch.Tensor | None,
        positions_BL: torch.Tensor,
        inputs_embeds_BLD: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        """hidden_BLD of tokens [start, start + L), whose keys/values it writes to ``cache`` (valid up to
        start + L afterwards). valid_BT: bool, which of the first start + L tokens may be attended (None: all).
        inputs_embeds_BLD: the inputs instead of ``ids_BL``'s embeddings. causal: False lets the L new tokens
        see each other both ways (a next-scale chunk: one scale's tokens), True is next-token order."""
        B, L = positions_BL.shape
        stop, kernels = start + L, self.kernels
        H, K, d = self.heads, self.kv_heads, self.head_dim
        cache.reserve(stop)
        rope_BL2d = self._rope_table(stop)[positions_BL]
        cos_BL1d, sin_BL1d = rope_BL2d[:, :, :1], rope_BL2d[:, :, 1:]
        mask = _attention_mask(valid_BT, start, stop, positions_BL.device, causal)
        x_BLD = F.embedding(ids_BL, self.embedding) if inputs_embeds_BLD is None else inputs_embeds_BLD
        h_ND = x_BLD.reshape(B * L, -1)  # the residual stream, N = B * L
        for layer, kv_BkTd in zip(self.layers, cache.layers):  # k = 2K: keys, then values
            x_ND = F.rms_norm(h_ND, h_ND.shape[-1:], layer.input_norm, self.eps)
            qkv_BLhd = kernels.linear(x_ND, layer.qkv, layer.qkv_bias).view(B, L, H + 2 * K, d)
            qk_BLhd = qkv_BLhd[:, :, : H + K]  # RoPE on q and k at once; roll + signed sin is HF's rotate_half
            torch.add(qk_BLhd * cos_BL1d, qk_BLhd.roll(d // 2, -1) * sin_BL1d, out=qk_BLhd)
            kv_BkTd[:, :, start:stop] = qkv_BLhd[:, :, H:].transpose(1, 2)
            o_BHLd = F.scaled_dot_product_attention(
                qkv_BLhd[:, :, :H].transpose(1, 2),
                kv_BkTd[:, :K, :stop],
                kv_BkTd[:, K:, :stop],
                attn_mask=mask,
                scale=self.scaling,
                enable_gqa=H != K,
            )
            # einops' per-call pattern parsing would cost as much as this reshape's op: reshape directly
            h_ND = kernels.add_linear(h_ND, o_BHLd.transpose(1, 2).reshape(B * L, H * d), layer.out, layer.out_bias)
            x_ND = F.rms_norm(h_ND, h_ND.shape[-1:], layer.post_norm, self.eps)
            h_ND = kernels.add_linear(h_ND, kernels.gated(x_ND, layer), layer.down, layer.down_bias)
        cache.length = stop
        return F.rms_norm(h_ND, h_ND.shape[-1:], self.norm, self.eps).view(B, L, -1)

    def _rope_table(self, length: int) -> torch.Tensor:
        """(P, 2, d) cos and signed sin for positions < P (P >= length): q cos + roll(q, d/2) sin is RoPE."""
        if self.rope_P2d.shape[0] < length:
            size = max(length, 2 * self.rope_P2d.shape[0], 256)
            inv_freq = self.inv_freq.to(self.embedding.device)
            freqs_Pf = torch.arange(size, device=inv_freq.device).float()[:, None] * inv_freq  # fp32, as HF
            emb_Pd = torch.cat([freqs_Pf, freqs_Pf], dim=-1)
            cos_Pd, sin_Pd = emb_Pd.cos() * self.attention_scaling, emb_Pd.sin() * self.attention_scaling
            sin_Pd[:, : self.head_dim // 2] *= -1
            self.rope_P2d = torch.stack([cos_Pd, sin_Pd], dim=1).to(self.embedding.dtype)
        return self.rope_P2d


def _attention_mask(
    valid_BT: torch.Tensor | None, start: int, stop: int, device: torch.device, causal: bool = True
) -> torch.Tensor | None:
    """SDPA's bool mask for queries [start, stop) over keys [0, stop): causal (unless not), padding keys masked.

    A single query sees the whole cache (no causal part); in a chunk every query also sees itself, so a padding
    query never has an empty row (SDPA would give NaN, and NaN times a zero weight spreads).
    """
    if stop - start == 1 or not causal:
        return None if valid_BT is None else valid_BT[:, None, None, :stop]
    key_T = torch.arange(stop, device=device)
    query_L1 = key_T[start:, None]
    allowed_1LT = (key_T <= query_L1)[None]
    if valid_BT is None:
        return allowed_1LT[:, None]
    allowed_BLT = (valid_BT[:, None, :stop] & allowed_1LT) | (key_T == query_L1)[None]
    return allowed_BLT[:, None]


def _kernels(kernels: str, weight: torch.Tensor) -> AtenKernels:
    if kernels == "auto":
        return OneDNNKernels() if OneDNNKernels.works_for(weight) else AtenKernels()
    if kernels == "aten":
        return AtenKernels()
    if kernels == "onednn":
        if not OneDNNKernels.works_for(weight):
            raise ValueError("kernels='onednn' needs float32 weights on a CPU and a PyTorch built with oneDNN")
        return OneDNNKernels()
    raise ValueError(f"kernels={kernels!r}; choose 'auto', 'aten' or 'onednn'")


def _fuse(layer: nn.Module, with_gate_up: bool) -> _Layer:
    attention, mlp = layer.self_attn, layer.mlp
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    biases = [p.bias for p in projections]
    fused = _Layer(
        input_norm=layer.input_layernorm.weight.detach(),
        qkv=torch.cat([p.weight.detach() for p in projections]),
        qkv_bias=torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None,
        out=attention.o_proj.weight.detach(),
        out_bias=_bias(attention.o_proj),
        post_norm=layer.post_attention_layernorm.weight.detach(),
        gate=mlp.gate_proj.weight.detach(),
        gate_bias=_bias(mlp.gate_proj),
        up=mlp.up_proj.weight.detach(),
        up_bias=_bias(mlp.up_proj),
        down=mlp.down_proj.weight.detach(),
        down_bias=_bias(mlp.down_proj),
    )
    if with_gate_up:
        fused.gate_up = torch.cat([fused.gate, fused.up])
        if fused.gate_bias is not None and fused.up_bias is not None:
            fused.gate_up_bias = torch.cat([fused.gate_bias, fused.up_bias])
    return fused


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return linear.bias.detach() if linear.bias is not None else None


def fast_path(model: nn.Module, backend: str) -> FastLlama | None:
    """The fast path ``backend`` asks for: "auto" (when supported and small enough), "fast" (or an error naming
    the reason), "hf" (None)."""
    if backend == "hf":
        return None
    if backend == "auto":
        return FastLlama.for_backbone(model.backbone)
    if backend == "fast":
        reason = unsupported_reason(model.backbone)
        if reason is not None:
            raise ValueError(f"backend='fast' cannot run this model: {reason}; use backend='auto' or 'hf'")
        return FastLlama.for_backbone(model.backbone, check_size=False)
    raise ValueError(f"backend={backend!r}; choose 'auto' (fast Llama path when supported), 'fast' or 'hf'")


__all__ = ["FAST_BYTES_LIMIT", "KERNELS", "AtenKernels", "FastLlama", "KVCache", "OneDNNKernels", "fast_path", "unsupported_reason"]
