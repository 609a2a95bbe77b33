"""Red-team tests (issue 10): attacks on a real ``ecac node`` process on 127.0.0.1."""
