"""What AWS Transcribe Streaming accepts (SPEC §3), as data: extend it here."""

LANGUAGES: tuple[str, ...] = tuple(
    """
    en-US en-GB en-AU en-IN en-IE en-NZ en-AB en-ZA en-WL es-US es-ES fr-FR fr-CA de-DE
    de-CH it-IT pt-BR pt-PT ja-JP ko-KR zh-CN zh-HK zh-TW th-TH hi-IN ar-SA ar-AE nl-NL
    no-NO sv-SE pl-PL fi-FI ca-ES af-ZA eu-ES hr-HR cs-CZ da-DK fa-IR gl-ES el-GR he-IL
    id-ID lv-LV ms-MY ro-RO ru-RU sr-RS sk-SK so-SO tl-PH uk-UA vi-VN zu-ZA
    """.split()
)
ENCODINGS: tuple[str, ...] = ("pcm", "ogg-opus", "flac")
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
