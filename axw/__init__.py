"""axw: autoregressive decoding, to learn, try and host.

    from axw import TransformerWrapper, Decoder, AutoregressiveWrapper
"""

from .attention import KVCache
from .filters import FILTER_LOGITS_FN, min_p, top_a, top_k, top_p
from .generation import Step
from .search import contrastive_decode_fn
from .trace import StepTrace
from .transformer import Decoder, Intermediates, TransformerWrapper
from .wrapper import AutoregressiveWrapper

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveWrapper", "Decoder", "FILTER_LOGITS_FN", "Intermediates", "KVCache", "Step", "StepTrace",
    "TransformerWrapper", "contrastive_decode_fn", "min_p", "top_a", "top_k", "top_p",
]
