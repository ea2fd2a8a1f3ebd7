"""The core's own plugin ``builtin`` (distribution ``canvas-core``): the builtin attention types
and the reference kernel, registered through the same hooks as any plugin, with lazy factory
strings (registering imports no torch)."""

from __future__ import annotations

from typing import Tuple

from canvas_core.plugins.hookspecs import hookimpl

#: name -> (class in canvas_core.attention, family, complexity (as canvas-engineering's table), description).
BUILTIN_ATTENTION = {
    "cross_attention": ("CrossAttention", "Dot-product", "O(NM)",
                        "Scaled dot-product softmax attention over the keys; the default type."),
    "self_attention": ("CrossAttention", "Dot-product", "O(NM)",
                       "Alias of cross_attention (kept for canvas-engineering compatibility)."),
    "linear_attention": ("LinearAttention", "Dot-product", "O(N+M)",
                         "Kernelised attention (elu+1 feature map) without softmax; linear cost."),
    "cosine_attention": ("CosineAttention", "Dot-product", "O(NM)",
                         "Softmax over cosine similarities of queries and keys; no sqrt(d) scaling."),
    "sigmoid_attention": ("SigmoidAttention", "Dot-product", "O(NM)",
                          "Independent sigmoid gate per query-key pair instead of a softmax."),
    "gated": ("GatedAttention", "Gating", "O(NM)",
              "Cross-attention behind a learned gate (Flamingo style) for optional conditioning."),
    "perceiver": ("PerceiverAttention", "Compression", "O(NK)",
                  "Keys compressed into a few learned latents, which the queries then read."),
    "pooling": ("PoolingAttention", "Compression", "O(N+M)",
                "Mean of the allowed values broadcast to every query; the cheapest transfer."),
    "copy": ("CopyAttention", "Transfer", "O(N)",
             "Parameter-free copy of aligned values into the queries' positions."),
    "sparse_attention": ("SparseAttention", "Sparse", "O(NK)",
                         "Softmax attention restricted to each query's top-k keys."),
    "local_attention": ("LocalAttention", "Sparse", "O(NW)",
                        "Softmax attention within a window of neighbouring key positions."),
    "none": ("NoneAttention", "Meta", "O(0)",
             "Edge declared but disabled: contributes zeros (ablations)."),
    "random_fixed": ("RandomFixedAttention", "Meta", "O(NK)",
                     "Attention to a fixed random subset of keys (a structure baseline)."),
    "mixture": ("MixtureAttention", "Meta", "O(NK)",
                "Learned router mixing several attention experts per query (MoE style)."),
    "rwkv": ("RWKVAttention", "State-space", "O(N)",
             "RWKV-style recurrence over the keys with a learned exponential decay."),
    "hyena": ("HyenaAttention", "Convolution", "O(N log N)",
              "Long implicit convolution over the keys via FFT, gated by the queries."),
}

#: The softmax family: the fn types a canvas layer runs through shared q/k/v projections and one
#: fused kernel call per type; what the reference kernel executes.  The only copy of this list.
SOFTMAX_FAMILY: Tuple[str, ...] = ("cross_attention", "self_attention")
#: Registry name of the core's reference kernel (always available, any device).
REFERENCE_KERNEL = "reference"


@hookimpl
def canvas_register_attention(registry) -> None:
    for name, (cls, family, complexity, description) in BUILTIN_ATTENTION.items():
        registry.add(name, f"canvas_core.attention:{cls}", family=family, complexity=complexity,
                     description=description)


@hookimpl
def canvas_register_kernels(registry) -> None:
    registry.add(REFERENCE_KERNEL, "canvas_core.runtime.kernels:ReferenceKernel", supports=SOFTMAX_FAMILY,
                 priority=0, family="Dot-product",
                 description="SDPA over the plan's rectangles (dense mask or block-sparse gather); any device.")
