"""Path parameters that refuse an empty name: click turns "" into Path(""), which is ".", so
`ddc encode-dir ""` would take the current folder and `-o ""` would aim at it."""
import os

import click


class NamedPath(click.Path):
    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty name is not a path", param, ctx)
        # a file option given "out/" would write a file named out: the slash says a folder was meant
        if isinstance(value, str) and not self.dir_okay and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} names a folder; give a file name", param, ctx)
        return super().convert(value, param, ctx)


def named_path(**kwargs) -> NamedPath:
    from pathlib import Path
    return NamedPath(**{"path_type": Path, **kwargs})
