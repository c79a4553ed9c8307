"""``python -m latentdit ...`` (also what ``torchrun -m latentdit train ...`` runs)."""

from latentdit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
