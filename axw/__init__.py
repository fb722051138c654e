"""axw: autoregressive decoding, to learn, try and host.

    from axw import TransformerWrapper, Decoder, AutoregressiveWrapper
"""

from .attention import KVCache
from .transformer import Decoder, Intermediates, TransformerWrapper
from .wrapper import AutoregressiveWrapper

__version__ = "0.1.0"

__all__ = ["AutoregressiveWrapper", "Decoder", "Intermediates", "KVCache", "TransformerWrapper"]
