"""The SQLite store: requests, answers, attempts, and its named migrations."""
