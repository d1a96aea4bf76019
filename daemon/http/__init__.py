"""salond's HTTP endpoint: the web client's files and the routes other features register.

:class:`~salon.daemon.http.endpoint.HttpEndpoint` is one aiohttp application on ``[http]
host/port``; features add their routes to it with :meth:`HttpEndpoint.add_routes` before it
starts (the web client here; stream mode's playlists later).
"""

from salon.daemon.http.endpoint import HttpEndpoint

__all__ = ["HttpEndpoint"]
