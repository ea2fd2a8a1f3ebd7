"""The core's own plugin: builtin attention types and the reference kernel.

Registered by the plugin host through the very same hooks as any installed plugin (but not via an
entry point), as plugin ``builtin`` of distribution ``canvas-core``.  Factories are lazy strings
into :mod:`canvas_core.attention` / :mod:`canvas_core.runtime.kernels`, so registering imports
no torch.
"""

from __future__ import annotations

from typing import Tuple

from canvas_core.plugins.hookspecs import hookimpl

_ATTN = "canvas_core.attention"

#: name -> (class in canvas_core.attention, family, complexity, description).
#: Family and complexity follow the type table of the canvas-engineering README ("The lineup").
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

#: The softmax family: the fn types a canvas layer runs through its shared q/k/v projections
#: and one fused kernel call per type.  The only copy of this list; the compiler, the runtime and
#: the backbone processors import it from here.
SOFTMAX_FAMILY: Tuple[str, ...] = ("cross_attention", "self_attention")
#: Registry name of the core's reference kernel (always available, any device).  The only copy.
REFERENCE_KERNEL = "reference"
#: What the reference kernel executes: exactly the softmax family.
REFERENCE_KERNEL_SUPPORTS: Tuple[str, ...] = SOFTMAX_FAMILY


@hookimpl
def canvas_register_attention(registry) -> None:
    for name, (cls, family, complexity, description) in BUILTIN_ATTENTION.items():
        registry.add(name, f"{_ATTN}:{cls}", family=family, complexity=complexity,
                     description=description)


@hookimpl
def canvas_register_kernels(registry) -> None:
    registry.add(
        REFERENCE_KERNEL,
        "canvas_core.runtime.kernels:ReferenceKernel",
        supports=REFERENCE_KERNEL_SUPPORTS,
        priority=0,
        family="Dot-product",
        description="SDPA over the plan's rectangles (dense mask or block-sparse gather); any device.",
    )
