"""Command-line entry points (placeholder)."""


def dadafsd_main() -> None:
    raise SystemExit("not built yet")


def dadafsp_main() -> None:
    raise SystemExit("not built yet")


def dadafs_main() -> None:
    raise SystemExit("not built yet")
