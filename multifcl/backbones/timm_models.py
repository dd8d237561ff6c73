"""timm vision transformers (a registry name or a folder saved by timm) as backbones.

Only timm's `VisionTransformer` (ViT, DeiT, DINOv2, CLIP/SigLIP image towers in timm, ...)
is supported: its stem, blocks and final norm map one to one onto the interface. The stem
is timm's own patch embedding, `_pos_embed` (class/register tokens and position embedding),
`patch_drop` and `norm_pre`; every block is a tap and a LoRA place (`qkv`).

The final feature is exactly timm's pre-logits feature, `forward_head(forward_features(x),
pre_logits=True)`: the final `norm`, then the model's own `global_pool` (CLS token, mean of
patch tokens, or attention pool) and `fc_norm`. A model saved without pooling
(`global_pool=''`) gets the CLS token, or the patch-token mean if it has no class token.
Intermediate taps pool the raw block output the same way (CLS token, or patch-token mean
for models that do not pool the CLS token), without a norm, like the Hugging Face ViTs.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from multifcl.backbones.base import Backbone
from multifcl.config import ConfigError

ERROR_PREFIX = "run config key 'backbone'"
MAX_REASON_CHARS = 300


class TimmViTStem(nn.Module):
    """Patch embedding, class/register tokens and position embedding, then timm's pre-norm."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = [vit]  # a list: the backbone owns the model; the stem only calls its parts

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        vit = self.vit[0]
        hidden = vit._pos_embed(vit.patch_embed(pixels))
        return vit.norm_pre(vit.patch_drop(hidden))


class TimmPreLogits(nn.Module):
    """timm's pre-logits feature of the last block output: norm, global pool, fc_norm."""

    def __init__(self, vit: nn.Module, pool_type: str) -> None:
        super().__init__()
        self.norm = vit.norm
        self.attn_pool = vit.attn_pool
        self.fc_norm = vit.fc_norm
        self.pool_type = pool_type
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.pool_include_prefix = bool(getattr(vit, "pool_include_prefix", False))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        if self.attn_pool is not None:
            if not self.pool_include_prefix:
                hidden = hidden[:, self.num_prefix_tokens :]
            return self.fc_norm(self.attn_pool(hidden))
        pooled = _pool_tokens(
            hidden, self.pool_type, self.num_prefix_tokens, self.pool_include_prefix
        )
        return self.fc_norm(pooled)


class TimmViTBackbone(Backbone):
    """A timm VisionTransformer split into stem, blocks and pooled final norm."""

    token_features = True
    lora_targets = ("qkv",)

    def __init__(self, model: nn.Module, name: str) -> None:
        from timm.data import resolve_model_data_config

        data_config = resolve_model_data_config(model)
        height, width = model.patch_embed.img_size
        if height != width:
            raise ConfigError(
                f"{ERROR_PREFIX}: timm model {name!r} takes {height}x{width} images; "
                "only square inputs are supported"
            )
        super().__init__(name, int(height), data_config["mean"], data_config["std"])
        model.reset_classifier(0)  # the classifier head is never used
        self.model = model
        final_pool = model.global_pool or ("token" if model.cls_token is not None else "avg")
        self.tap_pool_type = "token" if final_pool == "token" else "avg"
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.stem = TimmViTStem(model)
        self.blocks = model.blocks
        self.final = TimmPreLogits(model, final_pool)
        self.feature_dim = int(model.num_features)
        self.block_dims = [int(model.embed_dim)] * len(self.blocks)
        self.tap_blocks = list(range(len(self.blocks)))
        self.tap_dims = list(self.block_dims)
        self.freeze()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return _pool_tokens(hidden, self.tap_pool_type, self.num_prefix_tokens)

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final.fc_norm(self.final.norm(hidden))


def _pool_tokens(
    hidden: torch.Tensor, pool_type: str, num_prefix_tokens: int, include_prefix: bool = False
) -> torch.Tensor:
    """timm's token pooling: the CLS token, or a reduction over the (patch) tokens."""
    from timm.layers import global_pool_nlc

    return global_pool_nlc(
        hidden,
        pool_type=pool_type,
        num_prefix_tokens=num_prefix_tokens,
        reduce_include_prefix=include_prefix,
    )


def load_timm_backbone(spec: str, image_size: int) -> TimmViTBackbone:
    """The timm ViT `spec`: a registry name (pretrained weights) or a folder saved by timm.

    `image_size` > 0 builds the model for that input size (timm resamples the position
    embedding); 0 keeps the model's own size.
    """
    try:
        import timm
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ConfigError(
            f"{ERROR_PREFIX}: 'timm:{spec}' needs timm; run pip install -e \".[timm]\" "
            "(timm needs torchvision, which needs a matching torch)"
        ) from None
    model_name = _timm_model_name(timm, spec)
    size_args = {"img_size": image_size} if image_size > 0 else {}
    with torch.device("meta"):  # learn the architecture before any weights are read
        architecture = type(_create(timm, model_name, spec, pretrained=False, **size_args))
    is_plain_vit = issubclass(architecture, VisionTransformer) and all(
        getattr(architecture, method) is getattr(VisionTransformer, method)
        for method in ("forward_features", "forward_head")
    )
    if not is_plain_vit:
        raise ConfigError(
            f"{ERROR_PREFIX}: timm model {spec!r} is a {architecture.__name__}; only "
            "ViT-style timm models (timm's VisionTransformer) are supported"
        )
    model = _create(timm, model_name, spec, pretrained=True, **size_args)
    return TimmViTBackbone(model, f"timm:{spec}")


def _timm_model_name(timm, spec: str) -> str:
    """What `timm.create_model` takes for `spec`; a one-line error if timm cannot know it."""
    if Path(spec).expanduser().is_dir():
        return "local-dir:" + str(Path(spec).expanduser().resolve())
    if spec.startswith("hf-hub:") or timm.is_model(spec):
        return spec
    if "/" in spec or spec.startswith((".", "~")):
        raise ConfigError(f"{ERROR_PREFIX}: timm folder {spec!r} does not exist")
    close = difflib.get_close_matches(spec, timm.list_models(), n=3)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ConfigError(f"{ERROR_PREFIX}: unknown timm model {spec!r} (see timm.list_models()){hint}")


def _create(timm, model_name: str, spec: str, pretrained: bool, **kwargs) -> nn.Module:
    """`timm.create_model`, with any failure (no config, no weights, keys that do not match,
    no network) turned into a one-line error naming `spec`."""
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        raise ConfigError(f"{ERROR_PREFIX}: cannot load timm model {spec!r}: {reason}") from None
