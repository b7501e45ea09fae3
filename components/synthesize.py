"""synthesize: grow the seed tasks with Self-Instruct and Evol-Instruct through a teacher (data/synth/)."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.data.synthesis.stage import run

    stage_main("synthesize", run, argv)


if __name__ == "__main__":
    main()
