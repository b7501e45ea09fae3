"""rank: judges rank each prompt's samples into preference pairs -> data/prefs/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.rlhf.rank import run

    stage_main("rank", run, argv)


if __name__ == "__main__":
    main()
