"""`python -m metal3` is the same as the `metal3` command."""

from metal3.cli import main

raise SystemExit(main())
