"""What every benchmark's output shares: which code made a row, and JSON that strict parsers read."""
import functools
import json
import math
import subprocess
from pathlib import Path

import ddcodec


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The commit the rows come from (with "+dirty" for uncommitted changes), or the package
    version outside a git checkout: resumed rows keep their own, so a profile whose rows span
    several versions says so."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ddcodec"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"ddcodec {ddcodec.__version__}"


def finite(obj):
    """NaN and infinities -> None, recursively: json.dumps would write bare NaN, which is not JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(finite(obj), indent=1, allow_nan=False) + "\n")


def run_main(main) -> None:
    """`python -m benchmarks.X` as `ddc bench X` runs it: a bad folder, image or option value
    (a DDCError) is one line on stderr and exit code 1, not a traceback."""
    import sys

    from ddcodec.errors import DDCError
    try:
        main()
    except DDCError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
