"""sample: K responses per prompt from the SFT policy -> data/samples/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.rlhf.sample import run

    stage_main("sample", run, argv)


if __name__ == "__main__":
    main()
