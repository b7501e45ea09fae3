"""reward: Bradley-Terry reward model on data/prefs/ (TRL RewardTrainer inside Ray Train) -> models/reward/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.training.reward import run

    stage_main("reward", run, argv)


if __name__ == "__main__":
    main()
