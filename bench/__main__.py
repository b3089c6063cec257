"""`python -m bench` (what `make bench` runs)."""

from .harness import main

raise SystemExit(main())
