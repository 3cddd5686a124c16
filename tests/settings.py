"""Settings for the test run: the real settings module, with a test key and a file DB.

The SQLite test database is a file (not memory) so that the daphne servers that the
end-to-end tests start in subprocesses see the same data.
"""

import os
import tempfile

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key")
os.environ.setdefault(
    "DJANGO_TEST_DATABASE",
    os.path.join(tempfile.gettempdir(), f"voiceproject-test-{os.getpid()}.sqlite3"),
)

from voiceproject.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests run without collectstatic: let WhiteNoise find files on demand and not warn
# that STATIC_ROOT does not exist yet.
WHITENOISE_AUTOREFRESH = True
