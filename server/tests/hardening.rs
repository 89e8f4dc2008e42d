//! Issue 14's holes, each closed and proven against the served router: invites (no owner invites,
//! the creator's rights re-checked at sign-up, listing and revoking), password sign-ups that stay
//! unverified, tunnel tokens that die with their user's membership (and the live link closes),
//! expiring tokens that cannot mint longer-lived ones, and `/metrics` behind a token.

mod common;
#[path = "support/accounts.rs"]
mod support;

use common::Harness;
use delegate_agent::protocol::{Frame, Header, VERSION, decode, encode};
use delegate_server::settings::Registration;
use delegate_server::store::Role;
use delegate_testkit::anthropic::Script;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::json;
use support::Server;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PASSWORD: &str = "correct horse battery staple";

async fn signup(s: &Server, email: &str, invite: Option<&str>) -> support::Reply {
    let mut body = json!({ "email": email, "password": PASSWORD });
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    s.send(s.req(Method::POST, "/api/auth/signup").json(&body))
        .await
}

#[tokio::test]
async fn invites_stop_below_owner_die_with_their_creators_rights_and_can_be_revoked() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().registration(Registration::Invite).start().await;
    let owner = s.account("owner").await;
    let ws = owner.personal.clone();
    let maintainer = s.member(&ws, "maintainer", Role::Maintainer).await;
    let guest = s.member(&ws, "guest", Role::Guest).await;
    let path = format!("/api/workspaces/{}/invites", ws.slug);
    let invite = |token: &str, role: &str| {
        s.send(
            s.bearer(Method::POST, &path, token)
                .json(&json!({ "role": role })),
        )
    };

    // Nobody mints owner invites, not even an owner.
    let r = invite(&owner.token, "owner").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.to_string().contains("owner"), "{}", r.body);
    let r = invite(&owner.token, "maintainer").await;
    assert_eq!(r.status, 201, "{}", r.body);

    // A maintainer's code dies when the maintainer is demoted before it is used: claiming
    // re-checks the creator's role.
    let r = invite(&maintainer.token, "developer").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let by_maintainer = r.body["code"].as_str().unwrap().to_string();
    s.add_member(&ws, &maintainer, Role::Developer).await;
    let r = signup(&s, "late-joiner@example.com", Some(&by_maintainer)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        s.store()
            .user_by_email("late-joiner@example.com")
            .await
            .is_err(),
        "no account was made"
    );

    // Listing: maintainers and owners, never the codes; guests are refused.
    let r = invite(&owner.token, "developer").await;
    let revocable = r.body["id"].as_str().unwrap().to_string();
    let revocable_code = r.body["code"].as_str().unwrap().to_string();
    let listed = s.send(s.bearer(Method::GET, &path, &owner.token)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let invites = listed.body["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 3, "{}", listed.body);
    assert!(invites.iter().any(|i| i["id"] == revocable.as_str()));
    assert!(
        !listed.body.to_string().contains("dli_"),
        "no code in the list: {}",
        listed.body
    );
    let used = invites
        .iter()
        .find(|i| i["role"] == "developer" && i["used_at"].is_i64());
    assert!(used.is_some(), "the claimed (refused) code shows as used");
    let r = s.send(s.bearer(Method::GET, &path, &guest.token)).await;
    assert_eq!(r.status, 403);

    // Revoking: the code no longer signs anyone up; twice, or a used one, is a 404.
    let one = format!("{path}/{revocable}");
    let r = s.send(s.bearer(Method::DELETE, &one, &guest.token)).await;
    assert_eq!(r.status, 403);
    let r = s.send(s.bearer(Method::DELETE, &one, &owner.token)).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = s.send(s.bearer(Method::DELETE, &one, &owner.token)).await;
    assert_eq!(r.status, 404);
    let r = signup(&s, "revoked@example.com", Some(&revocable_code)).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // A code whose creator still may invite works, and its account is not email-verified.
    let r = invite(&owner.token, "guest").await;
    let code = r.body["code"].as_str().unwrap().to_string();
    let r = signup(&s, "newcomer@example.com", Some(&code)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let user = s
        .store()
        .user_by_email("newcomer@example.com")
        .await
        .unwrap();
    assert!(!s.store().email_verified(&user.id).await.unwrap());
    assert!(s.store().email_verified(&owner.user.id).await.unwrap());
}

#[tokio::test]
async fn an_expiring_token_can_not_mint_one_that_outlives_it() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().start().await;
    let a = s.account("ann").await;
    let short = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &a.token)
                .json(&json!({ "name": "short", "expires_in_seconds": 600 })),
        )
        .await;
    assert_eq!(short.status, 201, "{}", short.body);
    let short_token = short.body["token"].as_str().unwrap().to_string();
    let ceiling = short.body["expires_at"].as_i64().unwrap();
    // Asking for longer is refused; asking for nothing inherits the ceiling.
    let longer = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &short_token)
                .json(&json!({ "name": "longer", "expires_in_seconds": 3600 })),
        )
        .await;
    assert_eq!(longer.status, 400, "{}", longer.body);
    let forever = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &short_token)
                .json(&json!({ "name": "forever" })),
        )
        .await;
    assert_eq!(forever.status, 201, "{}", forever.body);
    assert_eq!(forever.body["expires_at"].as_i64(), Some(ceiling));
    let shorter = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &short_token)
                .json(&json!({ "name": "shorter", "expires_in_seconds": 60 })),
        )
        .await;
    assert_eq!(shorter.status, 201, "{}", shorter.body);
    assert!(shorter.body["expires_at"].as_i64().unwrap() <= ceiling);
    // A token without expiry still mints tokens without expiry.
    let open = s
        .send(
            s.bearer(Method::POST, "/api/tokens", &a.token)
                .json(&json!({ "name": "open" })),
        )
        .await;
    assert_eq!(open.status, 201, "{}", open.body);
    assert!(open.body["expires_at"].is_null(), "{}", open.body);
}

#[tokio::test]
async fn metrics_need_a_token_unless_made_public() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().start().await;
    let a = s.account("ann").await;
    let r = s.send(s.req(Method::GET, "/metrics")).await;
    assert_eq!(r.status, 401);
    let r = s.send(s.bearer(Method::GET, "/metrics", &a.token)).await;
    assert_eq!(r.status, 200);
    let public = h
        .serve()
        .env("DELEGATE_METRICS_PUBLIC", "true")
        .start()
        .await;
    let r = public.send(public.req(Method::GET, "/metrics")).await;
    assert_eq!(r.status, 200);
}

/// A developer's tunnel token stops working when they are removed from the workspace, and the
/// link they hold open is closed by the server within a re-check period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_tunnel_closes_and_its_token_is_refused() {
    let Some(h) = Harness::new(Script::text("unused")).await else {
        return;
    };
    let s = h.serve().start().await;
    let owner = s.account("owner").await;
    let ws = owner.personal.clone();
    let dev = s.member(&ws, "dev", Role::Developer).await;
    let code = s
        .send(
            s.bearer(
                Method::POST,
                &format!("/api/workspaces/{}/agent-codes", ws.slug),
                &dev.token,
            )
            .json(&json!({})),
        )
        .await;
    assert_eq!(code.status, 201, "{}", code.body);
    let registered = s
        .send(
            s.req(Method::POST, "/api/agents/register")
                .json(&json!({ "code": code.body["code"], "name": "laptop" })),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let sandbox = registered.body["sandbox_id"].as_str().unwrap().to_string();
    let token = registered.body["token"].as_str().unwrap().to_string();

    // A live link: hello, welcome.
    let url = format!("{}/api/tunnel/{sandbox}", s.base.replacen("http", "ws", 1));
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut link, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = Frame::new(Header::Hello {
        version: VERSION,
        agent: "hardening-test".into(),
        directory: None,
        password: None,
    });
    link.send(Message::Binary(encode(&hello).unwrap()))
        .await
        .unwrap();
    let mut welcomed = false;
    while let Some(Ok(m)) = link.next().await {
        if let Message::Binary(b) = m {
            let frame = decode(b).unwrap();
            assert!(
                matches!(frame.header, Header::Welcome { .. }),
                "{:?}",
                frame.header
            );
            welcomed = true;
            break;
        }
    }
    assert!(welcomed);

    // The owner removes the developer.
    let removed = s
        .send(s.bearer(
            Method::DELETE,
            &format!("/api/workspaces/{}/members/{}", ws.slug, dev.user.id),
            &owner.token,
        ))
        .await;
    assert_eq!(removed.status, 204, "{}", removed.body);

    // The server says goodbye (revoked) within a few re-check periods; pings are answered so
    // the close can only be the revocation.
    let goodbye = tokio::time::timeout(delegate_server::gateway::RECHECK_EVERY * 4, async {
        while let Some(Ok(m)) = link.next().await {
            let Message::Binary(b) = m else { continue };
            match decode(b).unwrap().header {
                Header::Ping { nonce } => {
                    let pong = Frame::new(Header::Pong { nonce });
                    let _ = link.send(Message::Binary(encode(&pong).unwrap())).await;
                }
                Header::Goodbye { code, reason } => return Some((code, reason)),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("the link closes after the member is removed");
    let (code, reason) = goodbye.expect("a goodbye before the close");
    assert_eq!(code, "revoked");
    assert!(reason.contains("left the workspace"), "{reason}");

    // And the token opens nothing any more.
    let again = s
        .send(
            s.req(Method::GET, &format!("/api/tunnel/{sandbox}"))
                .bearer_auth(&token)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        )
        .await;
    assert!(
        again.status == 401 || again.status == 403,
        "{}: {}",
        again.status,
        again.body
    );
}
