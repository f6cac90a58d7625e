"""``python -m fheqnn.cli``: the ``fheqnn`` program."""

import signal

from . import _interrupted_while_starting

signal.signal(signal.SIGINT, _interrupted_while_starting)

from . import process  # noqa: E402  (after the handler: loading it takes a while)

process.AS_PROGRAM = True
raise SystemExit(process.main())
