"""`{% operations_dashboard %}` and `{% operations_charts %}`: the admin index."""

from django import template

from transcription import dashboard, selectors

register = template.Library()


@register.simple_tag
def operations_dashboard() -> selectors.Dashboard:
    return selectors.dashboard()


@register.simple_tag
def operations_charts() -> dashboard.Charts:
    return dashboard.charts()
