"""x-transformers' top-level names that axw has, so its imports keep working
with the package name changed:

    from axw.x_transformers import TransformerWrapper, Decoder, AutoregressiveWrapper

(`from axw import ...` gives the same objects), with `from_x_transformers`,
which converts an x-transformers model. What axw does not have (`NOT_PROVIDED`):
encoders, cross-attention, the vision, continuous and multi-input wrappers and
the other x-transformers wrappers; axw is a decoder-only language model.
"""

from .convert_xt import from_x_transformers
from .transformer import Decoder, TransformerWrapper
from .utils import default, exists
from .wrapper import AutoregressiveWrapper

__all__ = ["AutoregressiveWrapper", "Decoder", "TransformerWrapper", "default", "exists", "from_x_transformers"]

# x-transformers 2.31.10's other top-level names
NOT_PROVIDED = (
    "AdaptiveRMSNorm", "Attention", "AttentionPool", "BeliefStateWrapper", "ContinuousAutoregressiveWrapper",
    "ContinuousTransformerWrapper", "CrossAttender", "DPO", "EntropyBasedTokenizer", "Encoder", "FeedForward",
    "MultiInputTransformerWrapper", "NeoMLP", "NextLatentWrapper", "NonAutoregressiveWrapper", "PrefixDecoder",
    "RMSNorm", "TransformerBlock", "ViTransformerWrapper", "XLAutoregressiveWrapper", "XTransformer",
    "XValAutoregressiveWrapper", "XValTransformerWrapper", "default_device", "layer_schedule",
)
