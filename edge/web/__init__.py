"""The device's local web page and HTTP API: the app and its server (`app.py`), the access rule
(`access.py`), request and response models (`schemas.py`) and the routers."""
from leukoscreen.edge.web.app import WebServer, create_app

__all__ = ["WebServer", "create_app"]
