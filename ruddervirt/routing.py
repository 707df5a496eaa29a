"""WebSocket routes (consoles, live build logs)."""

websocket_urlpatterns: list = []
