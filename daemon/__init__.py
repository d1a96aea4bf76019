"""salond: the Salon audio-room daemon."""

__version__ = "0.1.0"
