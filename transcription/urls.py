"""Browser routes of transcription: Talk at the root, History and downloads."""

from django.urls import path

from transcription import views

app_name = "transcription"

urlpatterns = [
    path("", views.talk, name="talk"),
    path("history/", views.history, name="history"),
    path(
        "history/<uuid:session_id>/download/<str:fmt>/",
        views.session_download,
        name="session_download",
    ),
]
