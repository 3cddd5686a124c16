"""The browser app: its pages, its URLs and the transcript downloads."""
