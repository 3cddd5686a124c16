"""HTTP routes."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.api import grant_create_view
from transcription.web.transcriptions import audio_transcriptions

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/grants", grant_create_view, name="api_grants"),
    # OpenAI's path, so that its clients work with this server as their base URL.
    path("v1/audio/transcriptions", audio_transcriptions, name="audio_transcriptions"),
    # Only the auth views the product uses (not all of django.contrib.auth.urls):
    # no password reset (no mail is sent) or change (staff use the admin's).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("transcription.web.urls")),
]
