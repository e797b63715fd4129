-- gatehouse store schema, version 1: users, sessions with their refresh-token families,
-- one-time tokens, access-token revocations and login-failure counters.
--
-- Applied once by gatehouse (src/store/postgres/migrate.rs) in a transaction, under an
-- advisory lock, and recorded in schema_migrations. Never edit a released migration: add
-- the next one.
--
-- Conventions, and why:
-- * Times are Unix seconds (BIGINT) supplied by gatehouse, never the database clock, so
--   expiry is decided by the same clock as the tokens it governs (and tests can move it).
-- * Ids, folded names and hashes use the "C" collation: they compare and sort byte-wise
--   whatever the database's locale, so uniqueness and list order are exactly the sled
--   backend's (UUID v7 ids then sort by creation time).
-- * email_folded and username_folded hold store::fold(...) as gatehouse computes it (trim,
--   Unicode lowercase); the unique constraints on them are what keeps two concurrent
--   sign-ups with the same address from both succeeding. Constraint names are matched by
--   the code to report which key collided.
-- * Tokens are stored as their SHA-256 (BYTEA), never in clear.

CREATE TABLE users (
    id                  TEXT COLLATE "C" NOT NULL,
    email               TEXT NOT NULL,
    email_folded        TEXT COLLATE "C" NOT NULL,
    username            TEXT,
    username_folded     TEXT COLLATE "C",
    name                TEXT,
    password_hash       TEXT NOT NULL,
    roles               TEXT[] NOT NULL,
    email_verified      BOOLEAN NOT NULL,
    locked              BOOLEAN NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    password_changed_at BIGINT NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_email_key UNIQUE (email_folded),
    -- NULLs are distinct: any number of users without a username.
    CONSTRAINT users_username_key UNIQUE (username_folded)
);

-- One row per refresh-token family. Deleting a user deletes its sessions (and through them
-- their refresh tokens) in the same statement.
CREATE TABLE sessions (
    id           TEXT COLLATE "C" NOT NULL,
    user_id      TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked      BOOLEAN NOT NULL,
    CONSTRAINT sessions_pkey PRIMARY KEY (id),
    CONSTRAINT sessions_user_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- Every refresh token a family ever had: the current one (rotated = false) and the rotated
-- ones, kept until the session ends so that presenting one again is recognised as reuse.
-- expires_at is the session's, copied so that purging needs no join.
CREATE TABLE refresh_tokens (
    hash       BYTEA NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    rotated    BOOLEAN NOT NULL,
    expires_at BIGINT NOT NULL,
    CONSTRAINT refresh_tokens_pkey PRIMARY KEY (hash),
    CONSTRAINT refresh_tokens_session_fkey FOREIGN KEY (session_id) REFERENCES sessions (id)
        ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);

-- Password-reset and email-verification tokens. At most one outstanding per user and kind:
-- a newer token replaces the older one (one_time_tokens_user_key). No foreign key to users:
-- deleting a user deletes its tokens explicitly, in the same transaction.
CREATE TABLE one_time_tokens (
    kind       TEXT COLLATE "C" NOT NULL,
    hash       BYTEA NOT NULL,
    user_id    TEXT COLLATE "C" NOT NULL,
    email      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    CONSTRAINT one_time_tokens_pkey PRIMARY KEY (kind, hash),
    CONSTRAINT one_time_tokens_user_key UNIQUE (kind, user_id),
    CONSTRAINT one_time_tokens_kind_check CHECK (kind IN ('password_reset', 'email_verification'))
);
CREATE INDEX one_time_tokens_expires_idx ON one_time_tokens (expires_at);

-- Access-token revocations, the feed every replica follows. A revocation is identified by
-- (kind, subject, issued_before, except_sid): subject is the sid of a 'session' revocation
-- (issued_before 0) or the user id of a 'user' one; '' stands for "no except_sid". seq
-- grows with every write (re-recording with a later `until` takes a new one), and writers
-- take it under a transaction-scoped advisory lock, so sequence order is commit order and
-- a reader that has applied everything up to N never sees a smaller number appear later.
CREATE SEQUENCE revocations_seq AS BIGINT;
CREATE TABLE revocations (
    kind          TEXT COLLATE "C" NOT NULL,
    subject       TEXT COLLATE "C" NOT NULL,
    issued_before BIGINT NOT NULL,
    except_sid    TEXT COLLATE "C" NOT NULL,
    until         BIGINT NOT NULL,
    seq           BIGINT NOT NULL DEFAULT nextval('revocations_seq'),
    CONSTRAINT revocations_pkey PRIMARY KEY (kind, subject, issued_before, except_sid),
    CONSTRAINT revocations_seq_key UNIQUE (seq),
    CONSTRAINT revocations_kind_check CHECK (kind IN ('session', 'user'))
);
ALTER SEQUENCE revocations_seq OWNED BY revocations.seq;
CREATE INDEX revocations_until_idx ON revocations (until);

-- Failed logins per folded login name (whether or not an account exists), updated by one
-- atomic upsert per failure.
CREATE TABLE login_failures (
    login        TEXT COLLATE "C" NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    CONSTRAINT login_failures_pkey PRIMARY KEY (login)
);
CREATE INDEX login_failures_expires_idx ON login_failures (expires_at);
