"""collect: load every source in `collect.sources` into canonical records (data/raw/)."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.data.collect import run

    stage_main("collect", run, argv)


if __name__ == "__main__":
    main()
