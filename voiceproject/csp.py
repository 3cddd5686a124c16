"""Content-Security-Policy on every HTTP response (issue 20 item 14).

Django 5.2 has none built in (6.0 does); the policy is small and fixed, so a few lines
here rather than a dependency. Everything the browser app and the admin load is
their own: scripts and styles from static files only (no inline code, no `eval`), the
microphone's AudioWorklet from a static file, the socket to this server, reply audio
as `blob:` URLs made from the message.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def header_value(policy: dict[str, list[str]]) -> str:
    """`policy` as the header writes it: `directive source …; …`."""
    return "; ".join(" ".join([name, *sources]) for name, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    """Adds settings.CONTENT_SECURITY_POLICY to each response that has none."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.value = header_value(settings.CONTENT_SECURITY_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if HEADER not in response:
            response[HEADER] = self.value
        return response
