"""sft: supervised fine-tuning on data/formatted/ (TRL SFTTrainer inside Ray Train) -> models/sft/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.training.sft import run

    stage_main("sft", run, argv)


if __name__ == "__main__":
    main()
