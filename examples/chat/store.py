"""The chat's database: users, their sessions, rooms and who is a member of
each, and every message. SQLite from the standard library.

Every method is blocking and opens its own short-lived connection, so it
may run in any thread: the web app calls them through a thread pool
(``run_in_threadpool``), never on the event loop. SQLite in WAL mode lets
readers run beside the one writer; a writer waits for another up to
``BUSY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Message", "Room", "Store", "User"]

#: Seconds a write waits for another writer before it fails.
BUSY_TIMEOUT = 5.0

#: The rooms a new database starts with; everyone is a member of the first.
SEED_ROOMS = (
    ("lobby", "Lobby"),
    ("python", "Python"),
    ("random", "Random"),
)
LOBBY = SEED_ROOMS[0][0]

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    avatar TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id TEXT NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    -- The author as they were when they wrote it: every client shows the
    -- same, live or from history.
    name TEXT NOT NULL,
    avatar TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room_id, id);
"""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    avatar: str

    @property
    def user_id(self) -> str:
        """The user id the hub knows this user by."""
        return str(self.id)


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    title: str
    member: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    room: str
    user: str
    name: str
    avatar: str
    text: str
    at: float

    def to_json(self) -> dict[str, Any]:
        """As clients see it: the data of its publication, and of history."""
        return asdict(self)


class Store:
    """The database at ``path`` (created, with its rooms, by :meth:`open`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection, in a transaction committed at the end (rolled back
        on an exception), then closed."""
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            with db:
                yield db
        finally:
            db.close()

    def open(self) -> None:
        """Create the tables and the seed rooms where missing."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            # WAL is a property of the file: set once, kept.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
            db.executemany(
                "INSERT OR IGNORE INTO rooms (id, title) VALUES (?, ?)", SEED_ROOMS
            )

    def secret_key(self) -> bytes:
        """The key that signs session cookies: made once, kept in the file,
        so that sessions outlive a restart."""
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES ('secret_key', ?)",
                (secrets.token_hex(32),),
            )
            (value,) = db.execute(
                "SELECT value FROM settings WHERE key = 'secret_key'"
            ).fetchone()
        return bytes.fromhex(value)

    # -- users and sessions -------------------------------------------------------

    def log_in(self, name: str, avatar: str) -> tuple[User, str]:
        """The user called ``name`` (made if new, with ``avatar`` either way),
        a member of the lobby, and the id of a new session."""
        session = secrets.token_urlsafe(24)
        with self._db() as db:
            db.execute(
                "INSERT INTO users (name, avatar) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET avatar = excluded.avatar",
                (name, avatar),
            )
            id, name = db.execute(
                "SELECT id, name FROM users WHERE name = ?", (name,)
            ).fetchone()
            db.execute(
                "INSERT OR IGNORE INTO members (room_id, user_id) VALUES (?, ?)",
                (LOBBY, id),
            )
            db.execute(
                "INSERT INTO sessions (id, user_id, created) VALUES (?, ?, ?)",
                (session, id, time.time()),
            )
        return User(id, name, avatar), session

    def session_user(self, session: str) -> User | None:
        """Whose session this is, or None (unknown or logged out)."""
        with self._db() as db:
            row = db.execute(
                "SELECT users.id, users.name, users.avatar FROM sessions "
                "JOIN users ON users.id = sessions.user_id WHERE sessions.id = ?",
                (session,),
            ).fetchone()
        return None if row is None else User(*row)

    def log_out(self, session: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session,))

    # -- rooms ---------------------------------------------------------------------

    def rooms(self, user_id: int) -> list[Room]:
        """Every room, and whether ``user_id`` is a member."""
        with self._db() as db:
            rows = db.execute(
                "SELECT rooms.id, rooms.title, members.user_id IS NOT NULL "
                "FROM rooms LEFT JOIN members "
                "ON members.room_id = rooms.id AND members.user_id = ? "
                "ORDER BY rooms.rowid",
                (user_id,),
            ).fetchall()
        return [Room(id, title, bool(member)) for id, title, member in rows]

    def room(self, room: str) -> str | None:
        """The title of ``room``, or None if there is no such room."""
        with self._db() as db:
            row = db.execute("SELECT title FROM rooms WHERE id = ?", (room,)).fetchone()
        return None if row is None else str(row[0])

    def is_member(self, user_id: int, room: str) -> bool:
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM members WHERE room_id = ? AND user_id = ?",
                (room, user_id),
            ).fetchone()
        return row is not None

    def join(self, user_id: int, room: str) -> bool:
        """Make ``user_id`` a member of ``room``; False if there is no such
        room."""
        with self._db() as db:
            if db.execute("SELECT 1 FROM rooms WHERE id = ?", (room,)).fetchone():
                db.execute(
                    "INSERT OR IGNORE INTO members (room_id, user_id) VALUES (?, ?)",
                    (room, user_id),
                )
                return True
        return False

    # -- messages ------------------------------------------------------------------

    def add_message(self, room: str, user: User, text: str) -> Message:
        """Store a message; it gets the next id and the time now."""
        at = round(time.time(), 3)
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO messages (room_id, user_id, name, avatar, text, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (room, user.id, user.name, user.avatar, text, at),
            )
            id = cursor.lastrowid
        assert id is not None
        return Message(id, room, user.user_id, user.name, user.avatar, text, at)

    def older(
        self, room: str, before: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages of ``room`` before the id ``before`` (the
        newest without it), oldest first, and whether there are older ones."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, room_id, user_id, name, avatar, text, at FROM messages "
                "WHERE room_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (room, before if before is not None else 2**63 - 1, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        return [_message(row) for row in reversed(rows[:limit])], more

    def newer(self, room: str, after: int, limit: int) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages of ``room`` after the id ``after``, oldest
        first, and whether there are newer ones."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, room_id, user_id, name, avatar, text, at FROM messages "
                "WHERE room_id = ? AND id > ? ORDER BY id LIMIT ?",
                (room, after, limit + 1),
            ).fetchall()
        return [_message(row) for row in rows[:limit]], len(rows) > limit


def _message(row: tuple[Any, ...]) -> Message:
    id, room, user_id, name, avatar, text, at = row
    return Message(id, room, str(user_id), name, avatar, text, at)
