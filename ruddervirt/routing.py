"""WebSocket routes (consoles, live build logs)."""

from django.urls import re_path

from consoles.consumer import ConsoleConsumer

websocket_urlpatterns: list = [
    # The token as a subprotocol (browsers), or in the path (scripts). Tokens are
    # secrets.token_urlsafe: base64url characters only.
    re_path(r"^ws/console/$", ConsoleConsumer.as_asgi()),
    re_path(r"^ws/console/(?P<token>[A-Za-z0-9_-]{16,128})$", ConsoleConsumer.as_asgi()),
]
