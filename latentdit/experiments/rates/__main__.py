"""``python -m latentdit.experiments.rates``: the same as ``latentdit rates``."""

from latentdit.experiments.rates import main

raise SystemExit(main())
