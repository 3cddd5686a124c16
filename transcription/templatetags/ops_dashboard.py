"""`{% operations_dashboard as d %}`: the figures on the admin index."""

from django import template

from transcription import selectors

register = template.Library()


@register.simple_tag
def operations_dashboard() -> selectors.Dashboard:
    return selectors.dashboard()
