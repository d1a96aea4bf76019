"""Stream mode: each room's mix as HLS, served on the HTTP endpoint to listeners past real time.

:class:`~salon.daemon.stream.service.StreamService` decides who streams and makes each room's
mix; :mod:`~salon.daemon.stream.http` serves playlists and segments; :mod:`.access` signs their
URLs; :mod:`.segmenter` cuts the mix into AAC fragmented-MP4 segments with FFmpeg (PyAV).
"""

from salon.daemon.stream.service import RoomStreamStats, StreamService

__all__ = ["RoomStreamStats", "StreamService"]
