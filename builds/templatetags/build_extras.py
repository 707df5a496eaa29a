"""Small filters of the build page."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def kept_left(seconds: int) -> str:
    """Seconds left as "1h 05m", "12m 30s" or "45s" (a kept VM's time left)."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
