"""x-transformers' `x_transformers.autoregressive_wrapper` names that axw has,
so its imports keep working with the package name changed:

    from axw.autoregressive_wrapper import AutoregressiveWrapper, top_k, top_p

The filters take x-transformers' arguments (`top_k(logits, frac_num_tokens,
k)`, `top_p(logits, thres)`, `top_a(logits, min_p_pow, min_p_ratio)`,
`min_p(logits, min_p)`); `FILTER_LOGITS_FN` holds them and axw's other filters.
The module's other names (`NOT_PROVIDED`) are x-transformers' internal helpers.
"""

from .filters import FILTER_LOGITS_FN, identity, min_p, top_a, top_k, top_p
from .processors import contrastive_decode_fn
from .utils import default, exists
from .wrapper import AutoregressiveWrapper

__all__ = ["FILTER_LOGITS_FN", "AutoregressiveWrapper", "contrastive_decode_fn", "default", "exists", "identity",
           "min_p", "top_a", "top_k", "top_p"]

# x-transformers 2.31.10's other names there: sampling, padding and cache helpers of its own loop
NOT_PROVIDED = ("align_right", "cast_tuple", "eval_decorator", "gumbel_noise", "gumbel_sample", "join", "log",
                "modify_cached_kv", "pad_at_dim")
