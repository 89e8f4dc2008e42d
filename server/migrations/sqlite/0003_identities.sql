-- Single sign-on identities: which account a provider's subject signs in as. A subject is linked to
-- an existing account by email only when the provider said the email was verified (auth::oidc).
-- Keep this file in step with the other database's 0003_identities.sql.

CREATE TABLE identities (
    provider       TEXT NOT NULL,
    subject        TEXT NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email          TEXT,
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_user ON identities (user_id);

-- Sign-ins in progress (auth::oidc): single use (deleted when the provider redirects back), expiring
-- after 10 minutes, bound to the browser that started them. Only hashes are kept: the PKCE verifier
-- and the nonce are derived from the browser's cookie and the state, neither of which is stored.
CREATE TABLE sso_logins (
    state_hash   TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    return_to    TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX sso_logins_created ON sso_logins (created_at);
