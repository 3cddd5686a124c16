"""What operators watch: health, readiness, metrics and the log format."""
