"""How a training process's OpenMP threads wait: passively, so that they leave the cores to the loader workers.

PyTorch's CPU operators run on an OpenMP thread pool (libgomp in the PyPI wheels). By default an idle pool thread
spins for a while before it sleeps, so between two operators every pool thread of the training process keeps a core
busy doing nothing. Loader workers decode on the same cores, and a spinning thread takes their time: on 2 cores,
`vit_mini` pretraining at the quickstart's settings with 2 loader workers ran at 52-54 clips/s with the default wait
and 70-73 with ``OMP_WAIT_POLICY=PASSIVE`` (losses bitwise the same: the wait policy changes no arithmetic); with no
loader workers the two were equal (54-55). Fine-tuning showed the same (about 80 against 115 clips/s).

libgomp reads the variable once, when it is loaded, i.e. when torch is first imported; `prefer_passive_wait` must run
before that, at the top of an entry script. A value the user set is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prefer_passive_wait(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default: this process's environment, which the processes it
    starts inherit) unless it is set already; returns the policy now in force there."""
    env = os.environ if environ is None else environ
    return env.setdefault(WAIT_POLICY_ENV, "PASSIVE")
