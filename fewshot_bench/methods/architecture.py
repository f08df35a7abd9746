"""Architecture helpers for backbone models: transformer block indices, the parameters of the top blocks,
the token-embedding matrix, and length buckets of a batch (padding-aware grouping of rows)."""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from .backbone import Batch
from ..core.errors import UserError

BUCKET_OVERHEAD = 32  # tokens: what one extra forward group costs on CPU, in padded-token units


def block_index(names: Sequence[str]) -> Tuple[Dict[str, int], int]:
    """{param name: transformer block index} for names inside the numbered block list, and the block count.

    The block list is the ``<prefix>.<i>.`` module list with the most distinct indices (``encoder.layer``
    for BERT-likes, ``h`` for GPT-2, ``layers`` for Llama-likes).
    """
    found: Dict[str, set] = {}
    for name in names:
        m = re.match(r"^(.*?)\.(\d+)\.", name)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not found:
        return {}, 0
    prefix = max(found, key=lambda p: len(found[p]))
    where = {}
    for name in names:
        m = re.match(rf"^{re.escape(prefix)}\.(\d+)\.", name)
        if m:
            where[name] = int(m.group(1))
    return where, max(found[prefix]) + 1


def adapted_names(names: Sequence[str], adapt_params: str, top_k: int) -> List[str]:
    """Backbone parameter names adapted in the inner loop (``names`` in registration order)."""
    names = [n for n in names if n.split(".", 1)[0] != "pooler"]  # unused: pooling reads the last hidden state
    if adapt_params == "all":
        return list(names)
    if adapt_params == "head" or top_k <= 0:
        return []
    where, count = block_index(names)
    if count == 0:
        raise UserError("maml: adapt_params=top-k found no numbered transformer blocks in this backbone; "
                        "use adapt_params=all or head")
    last_block = max(i for i, n in enumerate(names) if n in where)
    return [n for i, n in enumerate(names) if where.get(n, -1) >= count - top_k or (n not in where and i > last_block)]


def input_embedding_name(model: nn.Module) -> Optional[str]:
    """Name of the token-embedding weight when it can be cut to used rows (nn.Embedding, padding_idx None or 0)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding) or emb.padding_idx not in (None, 0) or emb.max_norm is not None:
        return None
    return next((n for n, p in model.named_parameters() if p is emb.weight), None)


def length_buckets(batch: Batch, overhead: int = BUCKET_OVERHEAD) -> List[Tuple[List[int], int]]:
    """Split rows into groups of similar length: [(row indices, group width)], minimising padded tokens.

    Exact dynamic programme over rows sorted by length, cost = Σ rows·width + overhead per group (the
    per-forward cost of a group, in tokens). Pooled vectors do not depend on padding (right-padded,
    masked), so running the groups separately changes results only by float rounding — and saves most
    of the matmul work on short texts padded to a long one (banking77: ~60% of the tokens are padding).
    """
    lengths = batch.attention_mask.sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], max(1, int(lengths[order[j - 1]]))))
        j = i
    return groups[::-1]
