"""The `dada` command line (placeholder until the analysis issue lands)."""


def main() -> None:
    raise SystemExit("dada: not built yet")
