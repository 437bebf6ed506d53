"""ddcodec: an image codec built on the Deep Decoder (Heckel & Hand, ICLR 2019).

    import ddcodec
    result = ddcodec.encode(image, channels=32)      # image: uint8 array, PIL image or path
    image = ddcodec.decode(result.data)
"""
from . import restore, tiles
from .codec import EncodeResult, decode_file, encode, encode_bank, encode_file
from .decoding import decode, info, load_model
from .errors import DDCError
from .fit import FitConfig
from .nets import Architecture
from .quant import QuantConfig

__version__ = "0.4.0"
__all__ = ["encode", "encode_bank", "decode", "encode_file", "decode_file", "info", "load_model", "EncodeResult", "FitConfig",
           "QuantConfig", "Architecture", "DDCError", "restore", "__version__"]
