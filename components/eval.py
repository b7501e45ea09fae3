"""eval: alignment metrics, over-optimization diagnostics, report and the promotion gate."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.evaluation.evaluate import run

    stage_main("eval", run, argv)


if __name__ == "__main__":
    main()
