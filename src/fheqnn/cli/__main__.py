"""``python -m fheqnn.cli``: the ``fheqnn`` program."""

from . import _catch_stops_while_starting

_catch_stops_while_starting()

from . import process  # noqa: E402  (after the handler: loading it takes a while)

process.AS_PROGRAM = True
raise SystemExit(process.main())
