-- gatehouse store schema, version 2: TOTP second factors (RFC 6238), their pending login
-- challenges, and the second factor of each session.
--
-- Conventions as in 0001_initial.sql.
-- * The TOTP secret is stored sealed by gatehouse (AEAD under auth.mfa.encryption_key, the
--   user id as associated data): the database never holds it in clear.
-- * Single use under races between replicas is one conditional UPDATE or DELETE each:
--   a time step is accepted only if it is later than last_step, a recovery code only while
--   it is in the array, a challenge only by the DELETE … RETURNING that removes it.

-- Sessions opened with a second factor: their access tokens carry "otp" in amr, refreshes
-- included. Sessions from before this migration were password logins.
ALTER TABLE sessions ADD COLUMN otp BOOLEAN NOT NULL DEFAULT FALSE;

-- One row per user with a second factor, pending (enabled = FALSE) from setup until the
-- first code confirms it.
CREATE TABLE mfa_totp (
    user_id        TEXT COLLATE "C" NOT NULL,
    secret         BYTEA NOT NULL,
    enabled        BOOLEAN NOT NULL,
    last_step      BIGINT NOT NULL,
    recovery_codes BYTEA[] NOT NULL,
    created_at     BIGINT NOT NULL,
    CONSTRAINT mfa_totp_pkey PRIMARY KEY (user_id),
    CONSTRAINT mfa_totp_user_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);

-- A correct password for an account with a second factor earns a challenge (the
-- mfa_token, stored as its SHA-256), completed by a code at {prefix}/login/mfa.
CREATE TABLE mfa_challenges (
    hash                 BYTEA NOT NULL,
    user_id              TEXT COLLATE "C" NOT NULL,
    login                TEXT COLLATE "C" NOT NULL,
    password_fingerprint BYTEA NOT NULL,
    expires_at           BIGINT NOT NULL,
    CONSTRAINT mfa_challenges_pkey PRIMARY KEY (hash),
    CONSTRAINT mfa_challenges_user_fkey FOREIGN KEY (user_id) REFERENCES users (id)
        ON DELETE CASCADE
);
CREATE INDEX mfa_challenges_expires_idx ON mfa_challenges (expires_at);
