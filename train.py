"""Train with lit_rlhf: ``python train.py fit --config configs/arithmetic/sft.yaml`` (``--help`` for all options)."""

from lit_rlhf.cli import main

if __name__ == "__main__":
    main()
