"""`python -m bort` is the `bort` command."""

from .cli import main

raise SystemExit(main())
