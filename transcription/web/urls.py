"""Browser routes of transcription: Talk at the root, History and downloads."""

from django.urls import path

from transcription.web import views

app_name = "transcription"

urlpatterns = [
    path("", views.talk, name="talk"),
    path("history/", views.history, name="history"),
    path("history/latest/", views.history_latest, name="history_latest"),
    path(
        "history/<uuid:session_id>/download/<str:fmt>/",
        views.session_download,
        name="session_download",
    ),
    path(
        "history/<uuid:session_id>/replies/<int:batch_pk>.mp3",
        views.reply_audio,
        name="reply_audio",
    ),
]
