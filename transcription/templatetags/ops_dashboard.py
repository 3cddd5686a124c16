"""`{% operations_dashboard %}` and `{% operations_charts %}`: the admin index."""

from django import template

from transcription.admin import dashboard

register = template.Library()


@register.simple_tag
def operations_dashboard() -> dashboard.Dashboard:
    return dashboard.dashboard()


@register.simple_tag
def operations_charts() -> dashboard.Charts:
    return dashboard.charts()
