"""spikeprop: forward-only learning rules for Lava-exact LIF spiking networks."""

__version__ = "0.1.0"


class SpikepropError(Exception):
    """An error caused by the user's input (files, flags, parameters).

    The CLI prints its message on one line and exits non-zero instead of showing a traceback.
    """


class PeerError(SpikepropError):
    """Data-parallel training: an error another rank reported and printed; this rank ends quietly
    with ``PEER_EXIT`` (``spikeprop.distributed``)."""


PEER_EXIT = 3  # the status of a data-parallel worker that stops because another one failed
