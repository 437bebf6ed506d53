"""Path parameters that refuse an empty name: click turns "" into Path(""), which is ".", so
`ddc encode-dir ""` would take the current folder and `-o ""` would aim at it."""
import click


class NamedPath(click.Path):
    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty name is not a path", param, ctx)
        return super().convert(value, param, ctx)


def named_path(**kwargs) -> NamedPath:
    from pathlib import Path
    return NamedPath(**{"path_type": Path, **kwargs})
