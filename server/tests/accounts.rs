//! Accounts end to end: password sign-up under each registration policy, sign-in with the session
//! cookie, sign-out and session revocation, expiry, login rate limiting, CSRF on cookie-
//! authenticated changes, members and the last-owner rule, bad input, `delegate user create
//! --password-stdin`; and no secret in any response body or in the log.

mod common;
#[path = "support/accounts.rs"]
mod support;

use std::process::Stdio;

use common::Harness;
use delegate_server::ids::{hash_secret, new_id, new_secret, now_ms};
use delegate_server::settings::Registration;
use delegate_server::store::{Role, TokenKind, TokenRecord};
use delegate_testkit::anthropic::Script;
use reqwest::Method;
use serde_json::json;
use support::{Server, assert_never_shown};
use tokio::io::AsyncWriteExt;

const PASSWORD: &str = "correct horse battery staple";

async fn signup(s: &Server, email: &str, invite: Option<&str>) -> support::Reply {
    let mut body = json!({ "email": email, "password": PASSWORD, "name": "Ann" });
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    s.send(s.req(Method::POST, "/api/auth/signup").json(&body))
        .await
}

async fn login(s: &Server, email: &str, password: &str) -> support::Reply {
    s.send(
        s.req(Method::POST, "/api/auth/login")
            .json(&json!({ "email": email, "password": password })),
    )
    .await
}

#[tokio::test]
async fn sign_up_sign_in_sessions_and_sign_out() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Open)
        .public_url("https://delegate.example.com")
        .start()
        .await;
    let up = signup(&s, "Ann@Example.com", None).await;
    assert_eq!(up.status, 201, "{}", up.body);
    assert_eq!(up.body["email"], "ann@example.com");
    assert_eq!(up.body["workspaces"][0]["role"], "owner");
    let first = up.session_cookie().expect("signed in at sign-up");
    let set_cookie = up.headers["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert_eq!(signup(&s, "ann@example.com", None).await.status, 409);

    let wrong = login(&s, "ann@example.com", "not the password!").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error_code(), "unauthorized");
    let unknown = login(&s, "nobody@example.com", PASSWORD).await;
    assert_eq!(unknown.status, 401, "the same answer as a wrong password");
    assert_eq!(unknown.body, wrong.body);
    let ok = login(&s, " ANN@example.com ", PASSWORD).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let second = ok.session_cookie().unwrap();
    assert_ne!(first, second);

    let me = s.send(s.cookie(Method::GET, "/api/auth/me", &second)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["name"], "Ann");
    let ws = me.body["workspaces"][0]["slug"]
        .as_str()
        .unwrap()
        .to_string();
    // The cookie works for the rest of the API too, changes included (own Origin).
    let made = s
        .send(
            s.cookie(Method::POST, "/api/tokens", &second)
                .json(&json!({ "name": "from the browser" })),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let api_token = made.body["token"].as_str().unwrap().to_string();
    let sessions = s
        .send(s.cookie(Method::GET, "/api/auth/sessions", &second))
        .await;
    let list = sessions.body["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{}", sessions.body);
    let current: Vec<_> = list.iter().filter(|x| x["current"] == true).collect();
    assert_eq!(current.len(), 1);
    let first_id = list.iter().find(|x| x["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Revoking the first session: its next request is 401.
    assert_eq!(
        s.send(s.cookie(Method::GET, "/api/auth/me", &first))
            .await
            .status,
        200
    );
    let revoked = s
        .send(s.cookie(
            Method::DELETE,
            &format!("/api/auth/sessions/{first_id}"),
            &second,
        ))
        .await;
    assert_eq!(revoked.status, 204);
    let after = s.send(s.cookie(Method::GET, "/api/auth/me", &first)).await;
    assert_eq!(after.status, 401);
    assert_eq!(after.error_code(), "unauthorized");

    // Sign-out revokes the current session and clears the cookie.
    let out = s
        .send(s.cookie(Method::POST, "/api/auth/logout", &second))
        .await;
    assert_eq!(out.status, 204);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        s.send(s.cookie(Method::GET, &format!("/api/workspaces/{ws}"), &second))
            .await
            .status,
        401
    );
    // The API token made through the session lives on; revoking it ends it too.
    let tokens = s
        .send(s.bearer(Method::GET, "/api/tokens", &api_token))
        .await;
    assert_eq!(tokens.status, 200);
    let id = tokens.body["tokens"][0]["id"].as_str().unwrap().to_string();
    let gone = s
        .send(s.bearer(Method::DELETE, &format!("/api/tokens/{id}"), &api_token))
        .await;
    assert_eq!(gone.status, 204);
    assert_eq!(
        s.send(s.bearer(Method::GET, "/api/auth/me", &api_token))
            .await
            .status,
        401
    );

    // Expired sessions and tokens: 401.
    let user_id = me.body["user_id"].as_str().unwrap().to_string();
    let store = s.orch.store();
    let mut expired = Vec::new();
    for (kind, prefix) in [(TokenKind::Session, "dss_"), (TokenKind::Api, "dlg_")] {
        let secret = new_secret(prefix);
        store
            .insert_token(&TokenRecord {
                id: new_id(if kind == TokenKind::Session {
                    "ses"
                } else {
                    "tok"
                }),
                kind,
                hash: hash_secret(&secret),
                name: None,
                user_id: Some(user_id.clone()),
                sandbox_id: None,
                workspace_id: None,
                created_at: now_ms() - 10_000,
                expires_at: Some(now_ms() - 1),
                revoked_at: None,
            })
            .await
            .unwrap();
        expired.push((kind, secret));
    }
    for (kind, secret) in &expired {
        let r = match kind {
            TokenKind::Session => s.cookie(Method::GET, "/api/auth/me", secret),
            _ => s.bearer(Method::GET, "/api/auth/me", secret),
        };
        assert_eq!(s.send(r).await.status, 401, "{kind:?}");
    }

    let hash = store.password_hash(&user_id).await.unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$"));
    let mut hidden = vec![first, second, hash, PASSWORD.to_string()];
    hidden.extend(expired.into_iter().map(|(_, s)| s));
    assert_never_shown(&s, &hidden, &[api_token]);
}

#[tokio::test]
async fn registration_policies_and_invites() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    // The default policy is invite.
    let s = h.serve().capture_logs().start().await;
    assert_eq!(h.settings().registration, Registration::Invite);
    let env = [("DELEGATE_REGISTRATION", "open")];
    let open = delegate_server::settings::Settings::load(None, &env).unwrap();
    assert_eq!(open.registration, Registration::Open);
    let err =
        delegate_server::settings::Settings::load(None, &[("DELEGATE_REGISTRATION", "maybe")])
            .unwrap_err();
    assert!(err.to_string().contains("DELEGATE_REGISTRATION"), "{err}");
    let refused = signup(&s, "eve@example.com", None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bogus = signup(&s, "eve@example.com", Some("dli_made-up")).await;
    assert_eq!(bogus.status, 403);

    let owner = s.account("owner").await;
    let ws = &owner.personal;
    let maintainer = s.member(ws, "maintainer", Role::Maintainer).await;
    let guest = s.member(ws, "guest", Role::Guest).await;
    let path = format!("/api/workspaces/{}/invites", ws.slug);
    // Guests can not invite; maintainers only below maintainer.
    let r = s
        .send(
            s.bearer(Method::POST, &path, &guest.token)
                .json(&json!({ "role": "guest" })),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .send(
            s.bearer(Method::POST, &path, &maintainer.token)
                .json(&json!({ "role": "maintainer" })),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s
        .send(
            s.bearer(Method::POST, &path, &maintainer.token)
                .json(&json!({ "role": "developer" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_string();
    assert!(code.starts_with("dli_"));

    let joined = signup(&s, "dev@example.com", Some(&code)).await;
    assert_eq!(joined.status, 201, "{}", joined.body);
    let roles: Vec<_> = joined.body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["slug"].as_str().unwrap().to_string(), w["role"].clone()))
        .collect();
    assert!(
        roles.contains(&(ws.slug.clone(), json!("developer"))),
        "{roles:?}"
    );
    // One-time.
    let again = signup(&s, "dev2@example.com", Some(&code)).await;
    assert_eq!(again.status, 403);
    // Expired.
    let old = new_secret("dli_");
    s.orch
        .store()
        .insert_invite(&delegate_server::store::Invite {
            id: new_id("inv"),
            hash: hash_secret(&old),
            workspace_id: ws.id.clone(),
            role: Role::Guest,
            created_by: owner.user.id.clone(),
            created_at: now_ms() - 10,
            expires_at: now_ms() - 1,
            used_at: None,
        })
        .await
        .unwrap();
    assert_eq!(signup(&s, "late@example.com", Some(&old)).await.status, 403);
    let lone = login(&s, "late@example.com", PASSWORD).await;
    assert_eq!(lone.status, 401, "no account was made");

    let closed = h
        .serve()
        .capture_logs()
        .registration(Registration::Disabled)
        .start()
        .await;
    let r = signup(&closed, "x@example.com", None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "forbidden");
    assert_never_shown(
        &s,
        &[
            old,
            owner.token,
            maintainer.token,
            guest.token,
            PASSWORD.into(),
        ],
        &[code],
    );
}

#[tokio::test]
async fn members_roles_and_the_last_owner() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Invite)
        .start()
        .await;
    let owner = s.account("owner").await;
    let ws = owner.personal.clone();
    let maintainer = s.member(&ws, "maintainer", Role::Maintainer).await;
    let dev = s.account("dev").await;
    let members = format!("/api/workspaces/{}/members", ws.slug);

    // Maintainers add below maintainer, not at or above.
    let add = |token: &str, email: &str, role: &str| {
        s.bearer(Method::POST, &members, token)
            .json(&json!({ "email": email, "role": role }))
    };
    let r = s
        .send(add(&maintainer.token, &dev.user.email, "maintainer"))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s
        .send(add(&maintainer.token, &dev.user.email, "developer"))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["role"], "developer");
    let known = r.body.clone();
    let r = s
        .send(add(&maintainer.token, &dev.user.email, "guest"))
        .await;
    assert_eq!(r.status, 409, "already a member");
    // An email without an account answers exactly like one with: no enumeration of accounts.
    let r = s
        .send(add(&maintainer.token, "nobody@example.com", "developer"))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut unknown = r.body.clone();
    unknown["email"] = known["email"].clone();
    assert_eq!(unknown, known, "the same answer either way");
    let listed = s.send(s.bearer(Method::GET, &members, &owner.token)).await;
    assert!(
        !listed.body.to_string().contains("nobody@example.com"),
        "{}",
        listed.body
    );

    let one = |id: &str| format!("{members}/{id}");
    // A maintainer can not touch another maintainer or the owner.
    let r = s
        .send(
            s.bearer(Method::PATCH, &one(&owner.user.id), &maintainer.token)
                .json(&json!({ "role": "guest" })),
        )
        .await;
    assert_eq!(r.status, 403);
    // The last owner can not be demoted or removed, not even by themselves.
    let r = s
        .send(
            s.bearer(Method::PATCH, &one(&owner.user.id), &owner.token)
                .json(&json!({ "role": "maintainer" })),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.error_code(), "conflict");
    let r = s
        .send(s.bearer(Method::DELETE, &one(&owner.user.id), &owner.token))
        .await;
    assert_eq!(r.status, 409);
    // Owners make owners; then the first may step down.
    let r = s
        .send(
            s.bearer(Method::PATCH, &one(&maintainer.user.id), &owner.token)
                .json(&json!({ "role": "owner" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .send(
            s.bearer(Method::PATCH, &one(&owner.user.id), &owner.token)
                .json(&json!({ "role": "developer" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .send(s.bearer(Method::DELETE, &one(&dev.user.id), &maintainer.token))
        .await;
    assert_eq!(r.status, 204);
    let list = s
        .send(s.bearer(Method::GET, &members, &maintainer.token))
        .await;
    let got: Vec<_> = list.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["owner", "developer"], "{}", list.body);

    // Workspaces: created by anyone, owned by the creator, slugs checked.
    let r = s
        .send(
            s.bearer(Method::POST, "/api/workspaces", &dev.token)
                .json(&json!({ "slug": "team-a", "name": "Team A" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["role"], "owner");
    let r = s
        .send(
            s.bearer(Method::POST, "/api/workspaces", &owner.token)
                .json(&json!({ "slug": "team-a", "name": "Again" })),
        )
        .await;
    assert_eq!(r.status, 409);
    let mine = s
        .send(s.bearer(Method::GET, "/api/workspaces", &dev.token))
        .await;
    let slugs: Vec<_> = mine.body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slug"].as_str().unwrap().to_string())
        .collect();
    assert!(slugs.contains(&"team-a".to_string()), "{slugs:?}");
}

#[tokio::test]
async fn bad_input_csrf_and_rate_limits_write_nothing() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Open)
        .start()
        .await;
    let owner = s.account("owner").await;
    let ws = owner.personal.clone();
    let store = s.orch.store();
    let hash = delegate_server::auth::passwords::hash(PASSWORD)
        .await
        .unwrap();
    store
        .set_password_hash(&owner.user.id, &hash)
        .await
        .unwrap();
    let session = login(&s, &owner.user.email, PASSWORD)
        .await
        .session_cookie()
        .unwrap();
    let sql = "' OR 1=1 --";
    let sql_email = "x' OR '1'='1@example.com";
    let json_post = |path: &str, body: &str| {
        s.req(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed signup",
            json_post("/api/auth/signup", "{\"email\": "),
            400,
            "invalid_input",
        ),
        (
            "malformed login",
            json_post("/api/auth/login", "{"),
            400,
            "invalid_input",
        ),
        (
            "unknown field in signup",
            s.req(Method::POST, "/api/auth/signup")
                .json(&json!({ "email": "a@example.com", "password": PASSWORD, "admin": true })),
            400,
            "invalid_input",
        ),
        (
            "unknown field in login",
            s.req(Method::POST, "/api/auth/login")
                .json(&json!({ "email": "a@example.com", "password": PASSWORD, "otp": 1 })),
            400,
            "invalid_input",
        ),
        (
            "short password",
            s.req(Method::POST, "/api/auth/signup")
                .json(&json!({ "email": "b@example.com", "password": "short" })),
            400,
            "invalid_input",
        ),
        (
            "huge password",
            s.req(Method::POST, "/api/auth/signup")
                .json(&json!({ "email": "c@example.com", "password": "p".repeat(1025) })),
            400,
            "invalid_input",
        ),
        (
            "not an email",
            s.req(Method::POST, "/api/auth/signup")
                .json(&json!({ "email": sql, "password": PASSWORD })),
            400,
            "invalid_input",
        ),
        (
            "SQL-looking login",
            s.req(Method::POST, "/api/auth/login")
                .json(&json!({ "email": sql_email, "password": sql })),
            401,
            "unauthorized",
        ),
        (
            "SQL-looking workspace slug",
            s.bearer(Method::POST, "/api/workspaces", &owner.token)
                .json(&json!({ "slug": sql, "name": "x" })),
            400,
            "invalid_input",
        ),
        (
            "SQL-looking workspace in a path",
            s.bearer(
                Method::GET,
                "/api/workspaces/'%20OR%201=1%20--/members",
                &owner.token,
            ),
            404,
            "not_found",
        ),
        (
            "SQL-looking member id",
            s.bearer(
                Method::DELETE,
                &format!("/api/workspaces/{}/members/'%20OR%201=1%20--", ws.slug),
                &owner.token,
            ),
            404,
            "not_found",
        ),
        (
            "SQL-looking member email",
            s.bearer(
                Method::POST,
                &format!("/api/workspaces/{}/members", ws.slug),
                &owner.token,
            )
            .json(&json!({ "email": sql_email, "role": "guest" })),
            400,
            "invalid_input",
        ),
        (
            "unknown role",
            s.bearer(
                Method::POST,
                &format!("/api/workspaces/{}/invites", ws.slug),
                &owner.token,
            )
            .json(&json!({ "role": "admin" })),
            400,
            "invalid_input",
        ),
        (
            "unknown field in an invite",
            s.bearer(
                Method::POST,
                &format!("/api/workspaces/{}/invites", ws.slug),
                &owner.token,
            )
            .json(&json!({ "role": "guest", "expires_at": 1 })),
            400,
            "invalid_input",
        ),
        (
            "SQL-looking token scope",
            s.bearer(Method::POST, "/api/tokens", &owner.token)
                .json(&json!({ "name": "x", "workspace": sql })),
            404,
            "not_found",
        ),
        (
            "SQL-looking session id",
            s.bearer(
                Method::DELETE,
                "/api/auth/sessions/'%20OR%201=1%20--",
                &owner.token,
            ),
            404,
            "not_found",
        ),
        // CSRF: a cookie-authenticated change from a foreign page.
        (
            "CSRF: foreign Origin",
            s.req(Method::POST, "/api/tokens")
                .header("cookie", format!("delegate_session={session}"))
                .header("origin", "https://evil.example")
                .json(&json!({ "name": "stolen" })),
            403,
            "csrf",
        ),
        (
            "CSRF: foreign Referer",
            s.req(Method::POST, "/api/workspaces")
                .header("cookie", format!("delegate_session={session}"))
                .header("referer", "https://evil.example/page")
                .json(&json!({ "slug": "evil", "name": "evil" })),
            403,
            "csrf",
        ),
        (
            "CSRF: no Origin nor Referer",
            s.req(Method::DELETE, &format!("/api/tokens/{}", owner.token_id))
                .header("cookie", format!("delegate_session={session}")),
            403,
            "csrf",
        ),
        (
            "CSRF: sign-in from a foreign page",
            s.req(Method::POST, "/api/auth/login")
                .header("origin", "https://evil.example")
                .json(&json!({ "email": owner.user.email, "password": PASSWORD })),
            403,
            "csrf",
        ),
        (
            "CSRF: sign-up from a foreign page",
            s.req(Method::POST, "/api/auth/signup")
                .header("origin", "https://evil.example")
                .json(&json!({ "email": "d@example.com", "password": PASSWORD })),
            403,
            "csrf",
        ),
        (
            "CSRF: the scheme differs",
            s.req(Method::POST, "/api/auth/logout")
                .header("cookie", format!("delegate_session={session}"))
                .header("origin", format!("https://{}", s.host)),
            403,
            "csrf",
        ),
    ];
    for (name, request, want, code) in cases {
        let r = s.send(request).await;
        assert_eq!(r.status.as_u16(), want, "{name}: {}", r.body);
        assert_eq!(r.error_code(), code, "{name}");
    }
    // A SQL-looking email without spaces is a well-formed one without an account: the same
    // answer as any add, and nothing changes (checked below with the rest).
    let r = s
        .send(
            s.bearer(
                Method::POST,
                &format!("/api/workspaces/{}/members", ws.slug),
                &owner.token,
            )
            .json(&json!({ "email": "x'--@example.com", "role": "guest" })),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.body);
    // Nothing was written: no accounts, tokens, workspaces, members; the session still works.
    for email in [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ] {
        assert!(store.user_by_email(email).await.is_err(), "{email}");
    }
    let tokens = s
        .send(s.bearer(Method::GET, "/api/tokens", &owner.token))
        .await;
    let tokens = tokens.body["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["revoked_at"], serde_json::Value::Null);
    let mine = s
        .send(s.cookie(Method::GET, "/api/workspaces", &session))
        .await;
    assert_eq!(mine.status, 200, "the session survived the CSRF attempts");
    assert_eq!(mine.body["workspaces"].as_array().unwrap().len(), 1);
    let members = store.workspace_members(&ws.id).await.unwrap();
    assert_eq!(members.len(), 1);
    // A cookie GET needs no Origin; a bearer change with a foreign Origin is no CSRF.
    let r = s
        .send(
            s.req(Method::GET, "/api/auth/me")
                .header("cookie", format!("delegate_session={session}")),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &owner.token)
                .header("origin", "https://evil.example")
                .json(&json!({ "name": "cli" })),
        )
        .await;
    assert_eq!(r.status, 201);
    let cli_token = r.body["token"].as_str().unwrap().to_string();

    // Rate limits, per email: 10 failures (each from another client address, so no IP limit
    // applies), then 429 even with the right password; another email is unaffected.
    let from = |last: u8, email: &str, password: &str| {
        let ip = std::net::IpAddr::from([127, 0, 0, last]);
        let client = reqwest::Client::builder()
            .local_address(ip)
            .build()
            .unwrap();
        client
            .post(format!("{}/api/auth/login", s.base))
            .json(&json!({ "email": email, "password": password }))
    };
    for n in 0..10 {
        let r = s
            .send(from(10 + n, &owner.user.email, "wrong password!"))
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = s.send(from(50, &owner.user.email, PASSWORD)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "limit");
    assert!(r.session_cookie().is_none());
    let other = s.account("other").await;
    let r = s.send(from(50, &other.user.email, "wrong password!")).await;
    assert_eq!(r.status, 401, "the limit is per email");
    // ... and per client IP, across emails.
    for n in 0..10 {
        let r = s
            .send(from(60, &format!("u{n}@example.com"), "wrong password!"))
            .await;
        assert_eq!(r.status, 401);
    }
    let r = s
        .send(from(60, "fresh@example.com", "whatever password"))
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    let r = s
        .send(from(61, "fresh@example.com", "whatever password"))
        .await;
    assert_eq!(r.status, 401, "another address is not limited");

    assert_never_shown(
        &s,
        &[session, hash, owner.token.clone(), PASSWORD.into()],
        &[cli_token],
    );
}

#[tokio::test]
async fn user_create_with_a_password_from_stdin_signs_in() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let mut child = h
        .delegate()
        .args([
            "user",
            "create",
            "--email",
            "admin@example.com",
            "--name",
            "Admin",
        ])
        .arg("--password-stdin")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(PASSWORD));
    let user_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(user_id.starts_with("usr_"), "{user_id}");

    // A too-short password is refused, and no user is made.
    let mut child = h
        .delegate()
        .args([
            "user",
            "create",
            "--email",
            "short@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"short\n").await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(!out.status.success());

    // `delegate token create` still works.
    let out = h
        .delegate()
        .args([
            "token",
            "create",
            "--user",
            "admin@example.com",
            "--name",
            "ci",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("dlg_"));

    let s = h
        .serve()
        .capture_logs()
        .registration(Registration::Disabled)
        .start()
        .await;
    let r = login(&s, "admin@example.com", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], user_id.as_str());
    assert_eq!(r.body["name"], "Admin");
    assert_eq!(login(&s, "short@example.com", "short").await.status, 401);
    let me = s.send(s.bearer(Method::GET, "/api/auth/me", &token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], "admin@example.com");
}

/// The account store methods (passwords, members and the last-owner rule, invites, sessions)
/// give the same answers on SQLite and PostgreSQL.
#[tokio::test]
async fn account_store_methods_agree_on_both_databases() {
    use delegate_server::store::{Invite, Store, StoreError};
    async fn check(store: &dyn Store) -> serde_json::Value {
        let (a, ws) = delegate_server::auth::create_user(store, "a@example.com", None)
            .await
            .unwrap();
        let (b, _) = delegate_server::auth::create_user(store, "b@example.com", None)
            .await
            .unwrap();
        let no_password = store.password_hash(&a.id).await.unwrap();
        store.set_password_hash(&a.id, "$argon2id$x").await.unwrap();
        let missing = store.set_password_hash("usr_nobody", "h").await.is_err();
        store.set_member(&ws.id, &b.id, Role::Guest).await.unwrap();
        let last_demote = store.change_member_role(&ws.id, &a.id, Role::Guest).await;
        let last_remove = store.remove_member(&ws.id, &a.id).await;
        let stranger = store.change_member_role(&ws.id, "usr_x", Role::Guest).await;
        store
            .change_member_role(&ws.id, &b.id, Role::Owner)
            .await
            .unwrap();
        store.remove_member(&ws.id, &a.id).await.unwrap();
        let members: Vec<_> = store
            .workspace_members(&ws.id)
            .await
            .unwrap()
            .into_iter()
            .map(|(u, r)| json!([u.email, r.as_str()]))
            .collect();
        let now = now_ms();
        let invite = |hash: &str, expires_at| Invite {
            id: new_id("inv"),
            hash: hash.into(),
            workspace_id: ws.id.clone(),
            role: Role::Developer,
            created_by: b.id.clone(),
            created_at: now,
            expires_at,
            used_at: None,
        };
        store
            .insert_invite(&invite("h1", now + 1000))
            .await
            .unwrap();
        store.insert_invite(&invite("h2", now - 1)).await.unwrap();
        let claimed = store.claim_invite("h1", now).await.unwrap();
        let twice = store.claim_invite("h1", now).await;
        let expired = store.claim_invite("h2", now).await;
        delegate_server::auth::sessions::start_session(store, &b.id)
            .await
            .unwrap();
        delegate_server::auth::create_api_token(store, &b.id, None, None)
            .await
            .unwrap();
        let sessions = store.sessions_of_user(&b.id).await.unwrap();
        let kind = |r: &Result<(), StoreError>| match r {
            Ok(()) => "ok",
            Err(StoreError::Conflict(_)) => "conflict",
            Err(StoreError::NotFound(_)) => "not_found",
            Err(_) => "other",
        };
        json!({
            "no_password": no_password,
            "password": store.password_hash(&a.id).await.unwrap(),
            "missing": missing,
            "last": [kind(&last_demote), kind(&last_remove), kind(&stranger)],
            "members": members,
            "claimed": [claimed.role.as_str(), claimed.used_at == Some(now)],
            "again": [twice.is_err(), expired.is_err()],
            "sessions": sessions.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(),
        })
    }
    let sqlite = delegate_server::store::connect("sqlite::memory:")
        .await
        .unwrap();
    let on_sqlite = check(sqlite.as_ref()).await;
    assert_eq!(
        on_sqlite,
        json!({
            "no_password": null,
            "password": "$argon2id$x",
            "missing": true,
            "last": ["conflict", "conflict", "not_found"],
            "members": [["b@example.com", "owner"]],
            "claimed": ["developer", true],
            "again": [true, true],
            "sessions": ["session"],
        })
    );
    let on_postgres = common::on_postgres(|store| async move { check(store.as_ref()).await }).await;
    if let Some(on_postgres) = on_postgres {
        assert_eq!(on_postgres, on_sqlite);
    }
}
