"""exo-discovery-http: peers from a URL that answers in Prometheus' ``http_sd`` format.

Any inventory that can serve ``[{"targets": ["host:port"], "labels": {...}}]`` (a CMDB, a
Kubernetes exporter, a static file behind a web server) becomes a discovery source.
"""

from .config import HttpConfig
from .plugin import HttpPlugin
from .source import HttpSource, HttpSourceError

__all__ = ["HttpConfig", "HttpPlugin", "HttpSource", "HttpSourceError"]
