"""Prefix-tuning of Hugging Face attention: extra keys and values some blocks attend to.

transformers (>= 4.50) looks up each attention module's kernel by the name in its config
(`config._attn_implementation`) in `AttentionInterface`. Inside `prefixed_attention`, the
backbone's config names `PREFIX_ATTENTION`, a kernel registered here: it puts the given
keys and values in front of the module's own, then runs PyTorch's scaled dot-product
attention (what transformers' "sdpa" kernel runs). Outside, nothing changes: the config's
own kernel is restored on exit, so passes without prefixes keep their exact numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones.base import KeyValuePrefix

PREFIX_ATTENTION = "multifcl-prefix"

# id(attention module) -> (N x P x d keys, N x P x d values) of the current pass
_ACTIVE: ContextVar[dict[int, KeyValuePrefix] | None] = ContextVar(
    "attention_prefixes", default=None
)


def _prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over (prefix + own) keys and values; query/key/value are N x heads x T x
    head_dim; the output N x T x heads x head_dim, as transformers' kernels return it."""
    prefix = (_ACTIVE.get() or {}).get(id(module))
    if prefix is not None:
        batch, heads, _, head_dim = key.shape
        keys, values = (
            part.to(key.dtype).reshape(batch, -1, heads, head_dim).transpose(1, 2)
            for part in prefix
        )
        key, value = torch.cat([keys, key], dim=2), torch.cat([values, value], dim=2)
        if attention_mask is not None:  # vision towers pass none; keep the prefix visible
            attention_mask = F.pad(attention_mask, (keys.shape[2], 0))
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return output.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Register the kernel; False where this transformers has no attention interface."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)
    return True


REGISTERED = _register()


def attention_module(block: nn.Module) -> nn.Module:
    """The module of `block` that calls the attention kernel (it has `config` and `scaling`)."""
    for module in block.modules():
        if hasattr(module, "scaling") and hasattr(module, "config"):
            return module
    raise TypeError(f"cannot find the attention of {type(block).__name__}")


@contextmanager
def prefixed_attention(
    blocks: nn.ModuleList, prefixes: Mapping[int, KeyValuePrefix]
) -> Iterator[None]:
    """Inside: block i of `blocks` attends to `prefixes[i]` besides its own tokens."""
    modules = {i: attention_module(blocks[i]) for i in prefixes}
    configs = {id(m.config): m.config for m in modules.values()}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    token = _ACTIVE.set({id(modules[i]): prefix for i, prefix in prefixes.items()})
    try:
        for config in configs.values():
            config._attn_implementation = PREFIX_ATTENTION
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]
        _ACTIVE.reset(token)
