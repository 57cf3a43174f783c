"""``python -m elmforge`` (and ``torchrun ... -m elmforge VERB``): the ``elmforge`` command."""

from elmforge.cli.main import main

raise SystemExit(main())
