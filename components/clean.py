"""clean: repair, filter, dedup, diversity-filter and decontaminate data/raw/ into data/clean/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.data.clean import run

    stage_main("clean", run, argv)


if __name__ == "__main__":
    main()
