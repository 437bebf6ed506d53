"""Typed errors. Every failure a user can cause ends in one of these, so the CLI can print one
line and exit non-zero, and a library caller can catch ``DDCError`` alone."""


class DDCError(Exception):
    """Base class of every error ddcodec raises on bad input."""


class FormatError(DDCError):
    """A .ddc byte string that cannot be decoded."""


class NotDDCError(FormatError):
    """The data does not start with the .ddc magic bytes."""


class UnsupportedVersionError(FormatError):
    """The file is a .ddc file of a format version this reader does not know."""


class TruncatedError(FormatError):
    """The data ends before the structure it declares."""


class CorruptError(FormatError):
    """CRC mismatch, or a field whose value is impossible."""


class LimitError(FormatError):
    """A header asks for more pixels, parameters or symbols than the reader allows."""


class ImageError(DDCError):
    """An input image that cannot be read, or that the codec refuses (with the reason)."""


class ReadError(DDCError):
    """A .ddc file that cannot be read from disk: missing, a folder, no permission. Not an
    ImageError: the file is not an image, and a caller may well want to tell the two apart."""


class OutputExistsError(DDCError):
    """The output exists and --force was not given, or it would overwrite an input."""


class OutputError(DDCError):
    """An output that cannot be written (permissions, a full disk, a missing folder)."""


class ConfigError(DDCError):
    """An option out of its valid range."""


class PartialBankError(ConfigError):
    """Some images of a bank failed (a PSNR target its fit did not reach) where the others were
    encoded: results[i] is image i's EncodeResult or None, errors[i] its message or None. Its
    own message is the first failure's, so a caller of encode() sees that image's error."""

    def __init__(self, results, errors):
        self.results, self.errors = list(results), list(errors)
        super().__init__(next(e for e in self.errors if e))


# torch reports a full device as a RuntimeError: CUDA's is its OutOfMemoryError subclass ("CUDA
# out of memory"), the CPU allocator's a plain one ("DefaultCPUAllocator: can't allocate memory").
_OOM_TEXTS = ("out of memory", "can't allocate memory")


def out_of_memory(e: BaseException) -> bool:
    """Whether torch raised e for want of memory (on any device)."""
    return isinstance(e, RuntimeError) and (type(e).__name__ == "OutOfMemoryError"
                                            or any(t in str(e) for t in _OOM_TEXTS))


def bank_out_of_memory(e: BaseException, size: int):
    """What to report for a bank of `size` images whose fit raised e, if e is a full device
    (then the next banks may still fit): else None, and the caller raises e."""
    if isinstance(e, MemoryError) or out_of_memory(e):
        return f"out of memory in a bank of {size} (try a smaller --bank, -k or image)"
    return None
