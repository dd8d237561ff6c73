"""Fed-L2P: Learning to Prompt (Wang et al., CVPR 2022) with FedAvg of prompts, keys and head.

A pool of `l2p-pool-size` prompts, each `l2p-prompt-length` tokens, with one learnable key
each. The query (the frozen backbone's CLS feature) picks the `l2p-top-k` keys of highest
cosine similarity; their prompts are joined (top_k x length tokens) and inserted into the
token sequence after the class token (prompt-tuning at the input), so the blocks see
N + top_k x length tokens. The head reads the mean of the prompt positions' outputs after
the final norm (the official code's `head_type = "prompt"`). The loss adds `-l2p-pull-weight`
x the summed cosine of the chosen keys to the query, per sample (the "surrogate loss" that
pulls the chosen keys to their queries). See docs/methods.md for the choices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones import Backbone
from multifcl.methods.prompting import PromptMethod, PromptModule, seeded


class PromptPool(PromptModule):
    """`pool_size` prompts (`length` x `dim`) with `key_dim`-wide keys; top-k by cosine."""

    def __init__(
        self, pool_size: int, length: int, top_k: int, dim: int, key_dim: int, pull_weight: float
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.pull_weight = pull_weight
        # uniform in [0, 1), the official code's `uniform` initializer of prompts and keys
        self.keys = nn.Parameter(torch.rand(pool_size, key_dim))
        self.prompts = nn.Parameter(torch.rand(pool_size, length, dim))

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x top_k*length x dim chosen prompts, the mean over samples of the summed
        cosine between the query and its chosen keys)."""
        keys = F.normalize(self.keys, dim=1)
        query = F.normalize(query, dim=1)
        chosen = (query @ keys.T).topk(self.top_k, dim=1).indices  # N x top_k
        prompts = self.prompts[chosen].flatten(1, 2)
        pull = (keys[chosen] * query[:, None]).sum() / len(query)
        return prompts, pull

    def features(
        self, backbone: Backbone, pixels: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, pull = self.select(query)
        hidden = backbone.prompted_hidden(pixels, prompts)
        outputs = backbone.token_outputs(hidden[:, 1 : 1 + prompts.shape[1]])
        return outputs.mean(dim=1), -self.pull_weight * pull


class L2PMethod(PromptMethod):
    name = "l2p"

    def build_prompts(self) -> PromptPool:
        config, backbone = self.config, self.backbone
        with seeded(config.seed + 1):
            return PromptPool(
                config.l2p_pool_size,
                config.l2p_prompt_length,
                config.l2p_top_k,
                backbone.block_dims[0],
                backbone.feature_dim,
                config.l2p_pull_weight,
            )
