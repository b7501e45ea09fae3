"""format: split, mix and chat-format data/clean/ into data/formatted/ for the trainers."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.data.format import run

    stage_main("format", run, argv)


if __name__ == "__main__":
    main()
