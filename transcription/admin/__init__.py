"""Admin for sessions, transcripts and errors: read-only audit, filters, exports."""

import contextlib
import uuid
from typing import TYPE_CHECKING

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from transcription import selectors
from transcription.admin import timeline
from transcription.admin.dashboard import OTHER_LABEL
from transcription.close_codes import DOCUMENTED, OTHER, close_code_group
from transcription.models import AudioSession, ReceiverBatch, SessionError, Transcript
from transcription.streaming.protocol import close_code_label
from transcription.web import exports

if TYPE_CHECKING:
    from transcription.selectors.dashboard import SessionWithCounts


class ReadOnlyAdminMixin:
    """Records of what happened: nobody adds or edits them here (deleting is fine)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class SessionRecordAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """A record that belongs to a session, listed with a link to it."""

    @admin.display(description="session")
    def session_link(self, obj) -> str:
        url = reverse("admin:transcription_audiosession_change", args=[obj.session_id])
        return format_html('<a href="{}">{}</a>', url, obj.session)


class TranscriptInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Transcript
    readonly_fields = ("seq", "text", "start_seconds", "end_seconds", "created_at")
    fields = readonly_fields
    extra = 0
    can_delete = False
    show_change_link = False


class SessionErrorInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = SessionError
    readonly_fields = ("created_at", "kind", "close_code", "message")
    fields = readonly_fields
    extra = 0
    can_delete = False


class ReceiverBatchInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ReceiverBatch
    readonly_fields = (
        "batch_link",
        "created_at",
        "status",
        "attempts",
        "delivered_at",
        "reply_text",
        "tts_status",
        "last_error",
    )
    fields = readonly_fields
    extra = 0
    can_delete = False

    @admin.display(description="batch")
    def batch_link(self, obj: ReceiverBatch) -> str:
        url = reverse("admin:transcription_receiverbatch_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, str(obj.batch_id)[:8])


class CloseCodeFilter(admin.SimpleListFilter):
    """The close codes of the rows, one option each for the documented ones and one
    for all the others (a client chooses its own: 3000-4999)."""

    title = "close code"
    parameter_name = "close_code"

    def lookups(self, request, model_admin):
        codes = (
            model_admin.model.objects.exclude(close_code=None)
            .order_by("close_code")
            .values_list("close_code", flat=True)
            .distinct()
        )
        groups = {close_code_group(code): code for code in codes}
        options = [
            (str(code), close_code_label(code))
            for group, code in groups.items()
            if group != OTHER
        ]
        if OTHER in groups:
            options.append((OTHER, OTHER_LABEL))
        return options

    def queryset(self, request, queryset):
        value = self.value()
        if value == OTHER:
            return queryset.exclude(close_code__in=DOCUMENTED).exclude(close_code=None)
        if value and value.isdigit():
            return queryset.filter(close_code=int(value))
        return queryset


def _export_action(fmt: str):
    def action(modeladmin, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        sessions = exports.sessions_for_export(session_ids=ids)
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = HttpResponse(
            exports.export(sessions, fmt), content_type=exports.CONTENT_TYPES[fmt]
        )
        name = f"sessions-{stamp}.{fmt}"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    action.__name__ = f"export_{fmt}"
    label = "sessions as CSV" if fmt == "csv" else f"transcripts as {fmt}"
    return admin.action(description=f"Export selected: {label}")(action)


def _minutes_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _median_worst(median: float | None, worst: float | None) -> str:
    if median is None:
        return "—"
    return f"{_seconds(median)} / {_seconds(worst)}"


@admin.register(AudioSession)
class AudioSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "started_at",
        "user",
        "token_name",
        "engine",
        "language_shown",
        "duration",
        "status",
        "close_code",
        "finals",
        "batches",
        "errors",
    ]
    list_filter = [
        "status",
        "engine",
        CloseCodeFilter,
        "started_at",
        ("user", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = [
        "transcripts__text",
        "user__username",
        "token__name",
        "token__prefix",
        "errors__message",
    ]
    date_hierarchy = "started_at"
    list_select_related = ["user", "token"]
    inlines = [TranscriptInline, SessionErrorInline, ReceiverBatchInline]
    actions = [_export_action(fmt) for fmt in exports.FORMATS]
    fieldsets = [
        (None, {"fields": ["id", "user", "token_link", "auth_method", "client"]}),
        (
            "Stream",
            {
                "fields": [
                    "engine",
                    "language",
                    "detected_language",
                    "language_probability",
                    "encoding",
                    "sample_rate",
                    "send_partials",
                    "parameters",
                ]
            },
        ),
        (
            "Outcome",
            {
                "fields": [
                    "started_at",
                    "ended_at",
                    "duration",
                    "status",
                    "close_code_text",
                    "close_reason",
                    "audio_seconds",
                    "audio_bytes",
                ]
            },
        ),
        (
            "Served by",
            {"fields": ["server_host", "server_pid", "server_started_at"]},
        ),
        (
            "Latency",
            {
                "fields": ["first_partial", "final_latency", "reply_latency"],
                "description": "Seconds: first audio to first transcript event; "
                "end of an utterance's audio (as received) to its final; last "
                "final of a batch to its reply sent.",
            },
        ),
    ]
    readonly_fields = [
        "token_link",
        "duration",
        "close_code_text",
        "first_partial",
        "final_latency",
        "reply_latency",
    ]

    def get_queryset(self, request):
        return selectors.session_list_with_counts()

    def get_inlines(self, request, obj):
        """Only the tables with rows: an empty one would be headers alone."""
        if obj is None:
            return self.inlines
        return [i for i in self.inlines if i.model.objects.filter(session=obj).exists()]

    def get_search_results(self, request, queryset, search_term):
        queryset, duplicates = super().get_search_results(
            request, queryset, search_term
        )
        # A session id pasted from a log line or an export finds that session.
        with contextlib.suppress(ValueError):
            session_id = uuid.UUID(search_term.strip())
            queryset |= self.get_queryset(request).filter(pk=session_id)
        return queryset, duplicates

    @admin.display(description="token", ordering="token__name")
    def token_name(self, obj: AudioSession) -> str:
        return obj.token.name if obj.token else "—"

    @admin.display(description="token")
    def token_link(self, obj: AudioSession) -> str:
        if obj.token is None:
            return "—"
        url = reverse("admin:accounts_apitoken_change", args=[obj.token.pk])
        return format_html('<a href="{}">{}</a>', url, obj.token)

    @admin.display(description="language", ordering="language")
    def language_shown(self, obj: AudioSession) -> str:
        """As asked; for language=auto, with what was identified (`auto → sv-SE`)."""
        if obj.detected_language:
            return f"{obj.language} → {obj.detected_language}"
        return obj.language

    @admin.display(description="duration")
    def duration(self, obj: AudioSession) -> str:
        return _minutes_seconds(obj.duration_seconds)

    @admin.display(description="close code")
    def close_code_text(self, obj: AudioSession) -> str:
        return close_code_label(obj.close_code)

    @admin.display(description="first partial")
    def first_partial(self, obj: AudioSession) -> str:
        return _seconds(obj.first_partial_seconds)

    @admin.display(description="final latency (median / worst)")
    def final_latency(self, obj: AudioSession) -> str:
        return _median_worst(obj.final_latency_p50, obj.final_latency_max)

    @admin.display(description="reply latency (median / worst)")
    def reply_latency(self, obj: AudioSession) -> str:
        return _median_worst(obj.reply_latency_p50, obj.reply_latency_max)

    @admin.display(description="finals", ordering="finals_count")
    def finals(self, obj: "SessionWithCounts") -> int:
        return obj.finals_count

    @admin.display(description="batches", ordering="batches_count")
    def batches(self, obj: "SessionWithCounts") -> int:
        return obj.batches_count

    @admin.display(description="errors", ordering="errors_count")
    def errors(self, obj: "SessionWithCounts") -> int:
        return obj.errors_count

    def get_urls(self):
        return [
            path(
                "<uuid:session_id>/reply-audio/<int:batch_pk>/",
                self.admin_site.admin_view(self.reply_audio_view),
                name="transcription_audiosession_reply_audio",
            ),
            *super().get_urls(),
        ]

    def reply_audio_view(self, request, session_id, batch_pk):
        """The stored speech of one reply (MP3), for the conversation's player."""
        session = AudioSession.objects.filter(pk=session_id).first()
        if session is None:
            raise Http404
        if not self.has_view_permission(request, session):
            raise PermissionDenied
        batch = session.batches.filter(pk=batch_pk).only("reply_audio").first()
        if batch is None or batch.reply_audio is None:
            raise Http404
        response = HttpResponse(bytes(batch.reply_audio), content_type="audio/mpeg")
        response["Cache-Control"] = "private, max-age=3600"
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        session = self.get_object(request, object_id)
        if session is not None:
            extra["timeline"] = timeline.session_timeline(session=session)
        return super().change_view(request, object_id, form_url, extra)


@admin.register(ReceiverBatch)
class ReceiverBatchAdmin(SessionRecordAdmin):
    list_display = [
        "created_at",
        "session_link",
        "status",
        "attempts",
        "delivered_at",
        "tts_status",
        "reply_text",
        "last_error",
    ]
    list_filter = ["status", "tts_status", "created_at"]
    search_fields = ["reply_text", "last_error", "session__user__username"]
    list_select_related = ["session", "session__user"]
    date_hierarchy = "created_at"
    exclude = ["reply_audio"]


@admin.register(Transcript)
class TranscriptAdmin(SessionRecordAdmin):
    list_display = ["created_at", "session_link", "seq", "text"]
    list_filter = ["created_at"]
    search_fields = ["text", "session__user__username"]
    list_select_related = ["session", "session__user"]
    date_hierarchy = "created_at"


@admin.register(SessionError)
class SessionErrorAdmin(SessionRecordAdmin):
    list_display = ["created_at", "session_link", "kind", "close_code", "message"]
    list_filter = ["kind", CloseCodeFilter, "created_at"]
    search_fields = ["message", "session__user__username"]
    list_select_related = ["session", "session__user"]
    date_hierarchy = "created_at"
