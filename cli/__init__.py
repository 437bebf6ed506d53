"""The `ddc` command line (installed as the package ddcodec_cli, so no top-level `cli`)."""
