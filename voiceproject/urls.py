"""HTTP routes."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.api import grant_create_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/grants", grant_create_view, name="api_grants"),
    # Only the auth views the product uses (not all of django.contrib.auth.urls):
    # no password reset (no mail is sent) or change (staff use the admin's).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("transcription.web.urls")),
]
