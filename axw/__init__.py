"""axw: autoregressive decoding, to learn, try and host.

    from axw import TransformerWrapper, Decoder, AutoregressiveWrapper

An x-transformers model converts with `axw.from_x_transformers(model)`.
"""

from .attention import KVCache
from .convert_xt import from_x_transformers
from .filters import (
    FILTER_LOGITS_FN,
    epsilon_cutoff,
    eta_cutoff,
    min_p,
    top_a,
    top_h,
    top_k,
    top_n_sigma,
    top_p,
    typical_p,
)
from .generation_config import GenerationConfig
from .ngrams import NgramDatastore
from .processors import contrastive_decode_fn
from .row_generators import RowGenerators
from .runtime import GenerateOutput, SpeculativeStats, Step
from .shared import SharedForwards
from .tokenizer import Tokenizer
from .trace import StepTrace
from .transformer import Decoder, DecoderConfig, Intermediates, TransformerConfig, TransformerWrapper
from .wrapper import AutoregressiveWrapper, WrapperConfig

__version__ = "0.1.0"

__all__ = [
    "AutoregressiveWrapper", "Decoder", "DecoderConfig", "FILTER_LOGITS_FN", "GenerateOutput", "GenerationConfig",
    "Intermediates", "KVCache", "NgramDatastore", "RowGenerators", "SharedForwards", "SpeculativeStats", "Step",
    "StepTrace", "Tokenizer", "TransformerConfig", "TransformerWrapper", "WrapperConfig", "contrastive_decode_fn",
    "epsilon_cutoff",
    "eta_cutoff", "from_x_transformers", "min_p", "top_a", "top_h", "top_k", "top_n_sigma", "top_p", "typical_p",
]
