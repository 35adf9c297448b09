"""`python -m siglip ...`: the `siglip` command (see siglip/cli)."""

from siglip.cli import main

raise SystemExit(main())
