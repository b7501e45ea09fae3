"""align: align the SFT policy with `align.method` (dpo, orpo, simpo, ppo, grpo, rloo, kto, rest, best_of_n) -> models/policy/."""

from alignflow.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    from alignflow.rlhf.align import run

    stage_main("align", run, argv)


if __name__ == "__main__":
    main()
