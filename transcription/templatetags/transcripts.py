"""Template filters for showing transcripts."""

from django import template

register = template.Library()


@register.filter
def clock(seconds: float | None) -> str:
    """Seconds from the start of the audio as m:ss (or h:mm:ss): 75.2 -> "1:15"."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
