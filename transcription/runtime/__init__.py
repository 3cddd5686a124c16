"""Process-wide state: capacity, startup, shutdown, the in-process worker, pools."""
