//! Single sign-on: a generic OpenID Connect provider (authorization code flow with PKCE S256,
//! `state` and `nonce`; discovery, ID token signature via JWKS, issuer, audience, expiry and nonce
//! checked by `openidconnect`) and GitHub OAuth (state and PKCE, then `/user` and `/user/emails`).
//!
//! A sign-in in progress is a row in the database keyed by the SHA-256 of its `state` (so any
//! server sharing the database can finish it): bounded ([`MAX_PENDING`]), expiring
//! ([`PENDING_TTL`]) and deleted on first use, so a tampered, expired or replayed `state` finds
//! nothing. It is bound to the browser that started it by a random cookie ([`BROWSER_COOKIE`],
//! stored hashed), so a callback URL handed to someone else does not sign them in (login CSRF).
//! The PKCE verifier and the nonce are derived from that cookie and the state ([`derive`]), so the
//! server stores neither, and someone who intercepts the redirect (code and state) still lacks the
//! verifier. Which account a provider's subject signs in as is decided in one place,
//! [`link_identity`].

use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::Deserialize;

use crate::ids::{hash_secret, now_ms};
use crate::settings::{GithubSettings, OidcSettings, Registration, SsoSettings};
use crate::store::{Identity, SsoLogin, Store, StoreError, User};

/// How long a started sign-in may take before its `state` is forgotten.
pub const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
/// At most this many sign-ins in progress at once; more are refused until some finish or expire.
pub const MAX_PENDING: u64 = 10_000;
/// At most this many sign-ins in progress from one client address, so one client cannot fill
/// [`MAX_PENDING`] and lock everyone else out.
pub const MAX_PENDING_PER_CLIENT: u64 = 20;
/// The cookie that binds sign-ins in progress to the browser that started them.
pub const BROWSER_COOKIE: &str = "delegate_sso";
/// Provider metadata and keys are fetched again after this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Every call to a provider gives up after this long.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// A sign-in provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// A generic OpenID Connect provider, found by discovery from its issuer.
    Oidc,
    /// GitHub OAuth (or GitHub Enterprise, or a stand-in speaking its wire format).
    Github,
}

impl Provider {
    /// The name in routes (`/api/auth/{provider}/...`) and stored identities.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Oidc => "oidc",
            Provider::Github => "github",
        }
    }
}

/// Why a sign-in failed. The messages are safe to show: no codes, tokens or secrets.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// The provider's settings are missing.
    #[error("{} sign-in is not configured on this server", .0.as_str())]
    NotConfigured(Provider),
    /// The callback's `state` matches no sign-in in progress (forged, expired or already used).
    #[error("unknown, expired or already used sign-in state; start the sign-in again")]
    BadState,
    #[error(
        "this sign-in was started in another browser (or its cookie was lost); start it again here"
    )]
    /// The callback came to a browser without the cookie of the one that started the sign-in.
    OtherBrowser,
    /// A request (or a configured URL) is malformed, e.g. a `return_to` off this server.
    #[error("the sign-in request is malformed: {0}")]
    BadRequest(String),
    /// [`MAX_PENDING`] sign-ins are already in progress.
    #[error("too many sign-ins in progress; try again in a few minutes")]
    Busy,
    /// The provider reported an error in the callback, or refused the code exchange.
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// An ID token or user info failed verification (signature, issuer, audience, nonce, expiry).
    #[error("the identity provider's answer did not verify: {0}")]
    InvalidToken(String),
    /// The provider was unreachable or answered something unexpected; details are only logged.
    #[error("the identity provider could not be reached or answered unexpectedly")]
    Upstream,
    /// The provider did not vouch for an email an existing account has, or for any email.
    #[error("{0}")]
    NotLinked(String),
    /// The person is not in an allowed GitHub organization or email domain.
    #[error("{0}")]
    NotAllowed(String),
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// What the provider told us about the person signing in.
#[derive(Debug, Clone)]
pub struct ProviderUser {
    /// Which provider vouched for the person.
    pub provider: Provider,
    /// The provider's stable id for the person (`sub` claim, GitHub user id).
    pub subject: String,
    /// The email the provider gave, if any.
    pub email: Option<String>,
    /// Whether the provider verified that email; only verified emails link or create accounts.
    pub email_verified: bool,
    /// A display name for a new account (GitHub falls back to the login).
    pub name: Option<String>,
}

/// The SSO side of the server: configured providers, an HTTP client for them, cached discovery.
/// Sign-ins in progress live in the store.
pub struct Sso {
    settings: SsoSettings,
    http: reqwest::Client,
    oidc_metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("oidc", &self.settings.oidc.is_some())
            .field("github", &self.settings.github.is_some())
            .finish_non_exhaustive()
    }
}

impl Sso {
    /// Sets up the configured providers; discovery happens on first use, not here.
    pub fn new(settings: SsoSettings) -> Self {
        // reqwest is built without a TLS provider of its own: make sure ring is installed.
        crate::net::install_crypto();
        let http = reqwest::Client::builder()
            // Following redirects from a provider's back channel invites SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .user_agent(concat!("delegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Sso {
            settings,
            http,
            oidc_metadata: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether `provider` is configured on this server.
    pub fn enabled(&self, provider: Provider) -> bool {
        match provider {
            Provider::Oidc => self.settings.oidc.is_some(),
            Provider::Github => self.settings.github.is_some(),
        }
    }

    /// Whether the session cookie should be `Secure` (the callbacks are served over https).
    pub fn secure_cookies(&self) -> bool {
        self.settings
            .redirect_base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    fn redirect_url(&self, provider: Provider) -> Result<String, SsoError> {
        let base = self
            .settings
            .redirect_base_url
            .as_deref()
            .ok_or(SsoError::NotConfigured(provider))?;
        Ok(format!("{base}/api/auth/{}/callback", provider.as_str()))
    }

    fn oidc(&self) -> Result<&OidcSettings, SsoError> {
        self.settings
            .oidc
            .as_ref()
            .ok_or(SsoError::NotConfigured(Provider::Oidc))
    }

    fn github(&self) -> Result<&GithubSettings, SsoError> {
        self.settings
            .github
            .as_ref()
            .ok_or(SsoError::NotConfigured(Provider::Github))
    }

    /// Discovery document and keys of the OIDC provider, cached for [`DISCOVERY_TTL`].
    async fn oidc_metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, SsoError> {
        let mut cached = self.oidc_metadata.lock().await;
        if !refresh
            && let Some((metadata, at)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.oidc()?.issuer_url.clone())
            .map_err(|e| SsoError::BadRequest(format!("OIDC_ISSUER_URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "OIDC discovery failed");
                SsoError::Upstream
            })?;
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn oidc_client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        SsoError,
    > {
        let cfg = self.oidc()?;
        let redirect = RedirectUrl::new(self.redirect_url(Provider::Oidc)?)
            .map_err(|e| SsoError::BadRequest(format!("OIDC_REDIRECT_BASE_URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(cfg.client_id.clone()),
            cfg.client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the provider's authorization URL to send the browser to, and the value of
    /// the [`BROWSER_COOKIE`] to set (`browser`, the cookie the browser sent, if it had a valid one,
    /// so sign-ins in two tabs both work).
    pub async fn start(
        &self,
        store: &dyn Store,
        provider: Provider,
        return_to: Option<&str>,
        browser: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(String, String), SsoError> {
        let return_to = safe_return_to(return_to)?;
        // A cookie is kept only if this server issued it and a sign-in of it is still pending (a
        // second tab): a value the client made up, or planted from a sibling host, is replaced,
        // so nobody else knows the secret the PKCE verifier and nonce derive from.
        let issued = match browser {
            Some(b)
                if b.starts_with("dsso_")
                    && b.len() <= 128
                    && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') =>
            {
                let since = now_ms() - PENDING_TTL.as_millis() as i64;
                store
                    .sso_browser_pending(&hash_secret(b), since)
                    .await?
                    .then(|| b.to_string())
            }
            _ => None,
        };
        let browser = issued.unwrap_or_else(|| crate::ids::new_secret("dsso_"));
        let state = CsrfToken::new_random();
        let verifier = PkceCodeVerifier::new(derive("pkce", &browser, state.secret()));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let login = SsoLogin {
            state_hash: hash_secret(state.secret()),
            provider: provider.as_str().to_string(),
            browser_hash: hash_secret(&browser),
            return_to,
            created_at: now_ms(),
            // Hashed like every other stored identifier; unknown clients share one bucket.
            client_hash: client
                .map(|ip| hash_secret(&ip.to_string()))
                .unwrap_or_default(),
        };
        let url = match provider {
            Provider::Oidc => {
                let client = self.oidc_client(self.oidc_metadata(false).await?)?;
                let nonce = Nonce::new(derive("nonce", &browser, state.secret()));
                let state = state.clone();
                let (url, _, _) = client
                    .authorize_url(
                        CoreAuthenticationFlow::AuthorizationCode,
                        move || state,
                        move || nonce,
                    )
                    .add_scope(Scope::new("email".into()))
                    .add_scope(Scope::new("profile".into()))
                    .set_pkce_challenge(challenge)
                    .url();
                url
            }
            Provider::Github => {
                let gh = self.github()?;
                let mut url =
                    reqwest::Url::parse(&format!("{}/login/oauth/authorize", gh.oauth_url))
                        .map_err(|e| SsoError::BadRequest(format!("GITHUB_OAUTH_URL: {e}")))?;
                // Membership of private organizations is visible only with read:org.
                let scope = if self.settings.github_allowed_orgs.is_empty() {
                    "read:user user:email"
                } else {
                    "read:user user:email read:org"
                };
                url.query_pairs_mut()
                    .append_pair("client_id", &gh.client_id)
                    .append_pair("redirect_uri", &self.redirect_url(provider)?)
                    .append_pair("scope", scope)
                    .append_pair("state", state.secret())
                    .append_pair("code_challenge", challenge.as_str())
                    .append_pair("code_challenge_method", "S256");
                url
            }
        };
        let expired_before = login.created_at - PENDING_TTL.as_millis() as i64;
        if !store
            .insert_sso_login(&login, expired_before, MAX_PENDING, MAX_PENDING_PER_CLIENT)
            .await?
        {
            return Err(SsoError::Busy);
        }
        Ok((url.to_string(), browser))
    }

    /// Finishes a sign-in from the provider's redirect: checks the state, redeems the code, and
    /// returns who signed in (not yet linked to an account; see [`link_identity`]).
    pub async fn finish(
        &self,
        store: &dyn Store,
        provider: Provider,
        callback: &Callback,
        browser: Option<&str>,
    ) -> Result<(ProviderUser, String), SsoError> {
        if !self.enabled(provider) {
            return Err(SsoError::NotConfigured(provider));
        }
        let state = callback
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SsoError::BadRequest("no state".into()))?;
        // Taken before anything else, so a state works once whatever happens next.
        let login = match store.take_sso_login(&hash_secret(state)).await {
            Ok(login) => login,
            Err(StoreError::NotFound(_)) => return Err(SsoError::BadState),
            Err(e) => return Err(e.into()),
        };
        if login.provider != provider.as_str()
            || now_ms() - login.created_at >= PENDING_TTL.as_millis() as i64
        {
            return Err(SsoError::BadState);
        }
        let browser = match browser {
            Some(b) if hash_secret(b) == login.browser_hash => b,
            _ => return Err(SsoError::OtherBrowser),
        };
        let verifier = derive("pkce", browser, state);
        if let Some(error) = &callback.error {
            return Err(SsoError::Refused(printable(error)));
        }
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SsoError::BadRequest("no code".into()))?;
        let user = match provider {
            Provider::Oidc => {
                let nonce = derive("nonce", browser, state);
                self.finish_oidc(code, verifier, nonce).await?
            }
            Provider::Github => self.finish_github(code, &verifier).await?,
        };
        if provider == Provider::Oidc {
            check_email_domain(&user, &self.settings.oidc_allowed_email_domains)?;
        }
        Ok((user, login.return_to))
    }

    async fn finish_oidc(
        &self,
        code: &str,
        verifier: String,
        nonce: String,
    ) -> Result<ProviderUser, SsoError> {
        let mut client = self.oidc_client(self.oidc_metadata(false).await?)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| SsoError::BadRequest(format!("the provider has no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                // The error names the failure (HTTP status, OAuth error code), never the code sent.
                tracing::warn!(error = %e, "OIDC code exchange failed");
                SsoError::Refused("the authorization code was not accepted".into())
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| SsoError::InvalidToken("no ID token in the token response".into()))?;
        let nonce = Nonce::new(nonce);
        let mut verified = id_token
            .claims(&client.id_token_verifier(), &nonce)
            .cloned();
        if let Err(ClaimsVerificationError::SignatureVerification(_)) = &verified {
            // The provider may have rotated its keys since the cached discovery: fetch them again.
            client = self.oidc_client(self.oidc_metadata(true).await?)?;
            verified = id_token
                .claims(&client.id_token_verifier(), &nonce)
                .cloned();
        }
        let claims = verified.map_err(|e| {
            tracing::warn!(error = %e, "OIDC ID token refused");
            SsoError::InvalidToken(e.to_string())
        })?;
        let mut email = claims.email().map(|e| e.as_str().to_string());
        let mut email_verified = claims.email_verified().unwrap_or(false);
        let mut name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string());
        if email.is_none() {
            // Some providers put the email only in the userinfo response.
            if let Ok(request) =
                client.user_info(token.access_token().clone(), Some(claims.subject().clone()))
            {
                let info: Result<CoreUserInfoClaims, _> = request.request_async(&self.http).await;
                match info {
                    Ok(info) => {
                        email = info.email().map(|e| e.as_str().to_string());
                        email_verified = info.email_verified().unwrap_or(false);
                        name = name.or_else(|| {
                            info.name()
                                .and_then(|n| n.get(None))
                                .map(|n| n.as_str().to_string())
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "OIDC userinfo failed"),
                }
            }
        }
        Ok(ProviderUser {
            provider: Provider::Oidc,
            subject: claims.subject().as_str().to_string(),
            email,
            email_verified,
            name,
        })
    }

    async fn finish_github(&self, code: &str, verifier: &str) -> Result<ProviderUser, SsoError> {
        let gh = self.github()?;
        let redirect = self.redirect_url(Provider::Github)?;
        let response = self
            .http
            .post(format!("{}/login/oauth/access_token", gh.oauth_url))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("client_id", gh.client_id.as_str()),
                ("client_secret", gh.client_secret.expose()),
                ("code", code),
                ("redirect_uri", redirect.as_str()),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e.without_url(), "GitHub token exchange failed");
                SsoError::Upstream
            })?;
        let token: GithubToken = json_body(response, "GitHub token exchange").await?;
        let access_token = match (token.access_token, token.error) {
            (Some(t), _) if !t.is_empty() => t,
            (_, error) => {
                let error = error.as_deref().map(printable).unwrap_or_default();
                tracing::warn!(%error, "GitHub refused the code");
                return Err(SsoError::Refused(format!(
                    "the authorization code was not accepted ({error})"
                )));
            }
        };
        let get = |path: &str| {
            self.http
                .get(format!("{}{path}", gh.api_url))
                .bearer_auth(&access_token)
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
        };
        let user: GithubUser = json_body(
            get("/user").send().await.map_err(|e| {
                tracing::warn!(error = %e.without_url(), "GitHub /user failed");
                SsoError::Upstream
            })?,
            "GitHub /user",
        )
        .await?;
        let emails: Vec<GithubEmail> = json_body(
            get("/user/emails").send().await.map_err(|e| {
                tracing::warn!(error = %e.without_url(), "GitHub /user/emails failed");
                SsoError::Upstream
            })?,
            "GitHub /user/emails",
        )
        .await?;
        if !self.settings.github_allowed_orgs.is_empty() {
            self.check_github_orgs(&get, &user.login).await?;
        }
        // Only the primary address, and only if GitHub verified it.
        let primary = emails.into_iter().find(|e| e.primary);
        Ok(ProviderUser {
            provider: Provider::Github,
            subject: user.id.to_string(),
            email_verified: primary.as_ref().is_some_and(|e| e.verified),
            email: primary.map(|e| e.email),
            name: user.name.filter(|n| !n.is_empty()).or(Some(user.login)),
        })
    }
}

impl Sso {
    /// Refuses a GitHub user who belongs to none of `GITHUB_ALLOWED_ORGS`, asking GitHub with the
    /// user's own token (`/user/orgs`, which lists private memberships too with `read:org`).
    async fn check_github_orgs(
        &self,
        get: &impl Fn(&str) -> reqwest::RequestBuilder,
        login: &str,
    ) -> Result<(), SsoError> {
        const PER_PAGE: usize = 100;
        // Ten pages: a thousand organizations is more than any real account; stop there.
        for page in 1..=10 {
            let orgs: Vec<GithubOrg> = json_body(
                get(&format!("/user/orgs?per_page={PER_PAGE}&page={page}"))
                    .send()
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e.without_url(), "GitHub /user/orgs failed");
                        SsoError::Upstream
                    })?,
                "GitHub /user/orgs",
            )
            .await?;
            let allowed = &self.settings.github_allowed_orgs;
            if orgs
                .iter()
                .any(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(&o.login)))
            {
                return Ok(());
            }
            if orgs.len() < PER_PAGE {
                break;
            }
        }
        tracing::info!(github_login = %printable(login), "GitHub sign-in outside the allowed organizations");
        Err(SsoError::NotAllowed(
            "your GitHub account is not a member of an organization this server admits (if you \
             are a member, grant the app access to the organization, or make the membership \
             visible to it)"
                .into(),
        ))
    }
}

/// Refuses an OIDC identity whose email is not verified or not in `OIDC_ALLOWED_EMAIL_DOMAINS`
/// (when that list is set).
fn check_email_domain(who: &ProviderUser, allowed: &[String]) -> Result<(), SsoError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let domain = who
        .email
        .as_deref()
        .filter(|_| who.email_verified)
        .and_then(|e| e.trim().rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase());
    match domain {
        Some(d) if allowed.contains(&d) => Ok(()),
        Some(_) => Err(SsoError::NotAllowed(
            "your email's domain is not one this server admits; sign in with your organization's \
             address"
                .into(),
        )),
        None => Err(SsoError::NotAllowed(
            "this server admits only verified emails of certain domains, and the identity \
             provider did not share a verified email"
                .into(),
        )),
    }
}

/// The query of a provider's redirect back to us.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct Callback {
    /// The authorization code to exchange; absent when the sign-in was declined.
    pub code: Option<String>,
    /// The `state` the sign-in started with; matched against the pending sign-in.
    pub state: Option<String>,
    /// Set by the provider when the user (or the provider) declined.
    pub error: Option<String>,
    /// The provider's human-readable explanation of `error`.
    pub error_description: Option<String>,
}

#[derive(Deserialize)]
struct GithubToken {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct GithubUser {
    id: i64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubOrg {
    login: String,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

async fn json_body<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> Result<T, SsoError> {
    let status = response.status();
    if !status.is_success() {
        tracing::warn!(%status, "{what} answered an error");
        return Err(SsoError::Upstream);
    }
    response.json::<T>().await.map_err(|e| {
        tracing::warn!(error = %e.without_url(), "{what} answered unexpected JSON");
        SsoError::Upstream
    })
}

/// A provider's error code, reduced to characters that are safe to echo.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
        .take(100)
        .collect()
}

/// A per-sign-in value (the PKCE verifier, the nonce) derived from the browser's cookie secret and
/// the state: `base64url(SHA-256(label, browser, state))`, 43 characters, a valid PKCE verifier.
/// Without the cookie (256 random bits) it cannot be computed, even from a leaked redirect URL.
fn derive(label: &str, browser: &str, state: &str) -> String {
    let mut h = Sha256::new();
    for part in ["delegate-sso-v1", label, browser, state] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Where to send the browser after signing in: a same-origin path only (`/x?y`), default `/`.
pub fn safe_return_to(return_to: Option<&str>) -> Result<String, SsoError> {
    let Some(r) = return_to.filter(|r| !r.is_empty()) else {
        return Ok("/".into());
    };
    let ok = r.starts_with('/')
        && !r.starts_with("//")
        && !r.starts_with("/\\")
        && r.len() <= 2048
        && !r.chars().any(|c| c.is_control() || c == '\\');
    if ok {
        Ok(r.to_string())
    } else {
        Err(SsoError::BadRequest(
            "return_to must be a path on this server, like /sandboxes".into(),
        ))
    }
}

/// Decides which account `who` signs in as, linking or creating as needed:
/// - a known (provider, subject) signs in as its account;
/// - else, with an email the provider marked verified: the account with that email (linked now),
///   or a new account;
/// - an email the provider did not verify is never linked to an existing account, and no account
///   is created for it either (that would let someone claim an address they do not own, and a later
///   verified sign-in of the real owner would then link into their account);
/// - a new account is made only when `registration` is `open`: with `invite` or `disabled`,
///   single sign-on signs people into accounts that exist, and creates none (otherwise anyone with
///   an account at the provider would get the operator's model key and a sandbox).
pub async fn link_identity(
    store: &dyn Store,
    who: &ProviderUser,
    registration: Registration,
) -> Result<User, SsoError> {
    let provider = who.provider.as_str();
    match store.identity(provider, &who.subject).await {
        Ok(identity) => return Ok(store.user_by_id(&identity.user_id).await?),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(email) = who.email.as_deref().map(|e| e.trim().to_lowercase()) else {
        return Err(SsoError::NotLinked(format!(
            "{provider} did not share an email address; delegate needs a verified one to sign you in"
        )));
    };
    let existing = match store.user_by_email(&email).await {
        Ok(user) => Some(user),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if !who.email_verified {
        return Err(SsoError::NotLinked(match existing {
            Some(_) => format!(
                "an account with this email exists, but {provider} has not verified the email, so \
                 it was not linked; verify it with {provider}, or sign in another way"
            ),
            None => format!(
                "{provider} has not verified your email address; verify it with {provider} and \
                 sign in again"
            ),
        }));
    }
    let user = match existing {
        // The account's own email was never shown to be its holder's (a password sign-up): a
        // provider's word for the address must not hand that account to someone else, nor the
        // identity to whoever signed up with the address first.
        Some(user) if !store.email_verified(&user.id).await? => {
            return Err(SsoError::NotLinked(format!(
                "an account with this email exists, but its email address was never verified, so \
                 {provider} sign-in is not linked to it: sign in with that account's password, or \
                 ask an administrator"
            )));
        }
        Some(user) => user,
        None if registration != Registration::Open => {
            return Err(SsoError::NotLinked(match registration {
                Registration::Disabled => "this server does not create accounts: ask its \
                                           administrator to add you (`delegate user create`), \
                                           then sign in again"
                    .to_string(),
                _ => format!(
                    "this server takes new accounts by invite only: sign up with an invite from \
                     a workspace maintainer, then sign in with {provider}"
                ),
            }));
        }
        None => match crate::auth::create_user(store, &email, who.name.as_deref()).await {
            Ok((user, _workspace)) => user,
            // Created by a concurrent sign-in in the meantime.
            Err(StoreError::Conflict(_)) => store.user_by_email(&email).await?,
            Err(e) => return Err(e.into()),
        },
    };
    let identity = Identity {
        provider: provider.to_string(),
        subject: who.subject.clone(),
        user_id: user.id.clone(),
        email: Some(email),
        email_verified: who.email_verified,
        created_at: now_ms(),
    };
    match store.insert_identity(&identity).await {
        Ok(()) => Ok(user),
        // A concurrent first sign-in of the same subject linked it first: use that link.
        Err(StoreError::Conflict(_)) => {
            let linked = store.identity(provider, &who.subject).await?;
            Ok(store.user_by_id(&linked.user_id).await?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_local_path() {
        assert_eq!(safe_return_to(None).unwrap(), "/");
        assert_eq!(safe_return_to(Some("")).unwrap(), "/");
        assert_eq!(safe_return_to(Some("/w/x?y=1")).unwrap(), "/w/x?y=1");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "evil",
            "/a\nb",
            "javascript:alert(1)",
        ] {
            assert!(safe_return_to(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_values_are_verifiers_and_differ_by_label_browser_and_state() {
        let v = derive("pkce", "dsso_a", "s");
        assert_eq!(v.len(), 43);
        assert!(
            v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(v, derive("pkce", "dsso_a", "s"));
        for other in [
            derive("nonce", "dsso_a", "s"),
            derive("pkce", "dsso_b", "s"),
            derive("pkce", "dsso_a", "t"),
            derive("pkce", "dsso_as", ""),
        ] {
            assert_ne!(v, other);
        }
    }

    #[tokio::test]
    async fn sign_ins_in_progress_work_once_for_their_provider_and_browser() {
        let store = crate::store::connect("sqlite::memory:").await.unwrap();
        let store = store.as_ref();
        let sso = Sso::new(SsoSettings {
            redirect_base_url: Some("http://127.0.0.1:1".into()),
            oidc: None,
            github: Some(GithubSettings {
                client_id: "c".into(),
                client_secret: crate::settings::Secret::new("s"),
                api_url: "http://127.0.0.1:1".into(),
                oauth_url: "http://127.0.0.1:1".into(),
            }),
            ..SsoSettings::default()
        });
        let start = || async {
            let (url, browser) = sso
                .start(store, Provider::Github, None, None, None)
                .await
                .unwrap();
            let url = reqwest::Url::parse(&url).unwrap();
            let state = url
                .query_pairs()
                .find(|(k, _)| k == "state")
                .unwrap()
                .1
                .into_owned();
            (state, browser)
        };
        let callback = |state: &str| Callback {
            code: None,
            state: Some(state.to_string()),
            error: Some("access_denied".into()),
            error_description: None,
        };
        // Right browser: gets as far as the provider's refusal; then the state is used up.
        let (state, browser) = start().await;
        let c = callback(&state);
        let r = sso
            .finish(store, Provider::Github, &c, Some(&browser))
            .await;
        assert!(matches!(r, Err(SsoError::Refused(_))), "{r:?}");
        let r = sso
            .finish(store, Provider::Github, &c, Some(&browser))
            .await;
        assert!(matches!(r, Err(SsoError::BadState)), "{r:?}");
        // Another browser (or none): refused, and used up too.
        let (state, browser) = start().await;
        let c = callback(&state);
        let r = sso
            .finish(store, Provider::Github, &c, Some("dsso_other"))
            .await;
        assert!(matches!(r, Err(SsoError::OtherBrowser)), "{r:?}");
        let r = sso
            .finish(store, Provider::Github, &c, Some(&browser))
            .await;
        assert!(matches!(r, Err(SsoError::BadState)), "{r:?}");
        let (state, _) = start().await;
        let r = sso
            .finish(store, Provider::Github, &callback(&state), None)
            .await;
        assert!(matches!(r, Err(SsoError::OtherBrowser)), "{r:?}");
        // A browser cookie the server did not issue is replaced; an issued one with a sign-in
        // pending is kept (two tabs).
        let (_, fresh) = sso
            .start(store, Provider::Github, None, Some("dsso_madeup"), None)
            .await
            .unwrap();
        assert_ne!(fresh, "dsso_madeup");
        let (_, again) = sso
            .start(store, Provider::Github, None, Some(&fresh), None)
            .await
            .unwrap();
        assert_eq!(again, fresh);
        // A state of one provider is not one of another.
        let (state, browser) = start().await;
        let r = sso
            .finish(store, Provider::Oidc, &callback(&state), Some(&browser))
            .await;
        assert!(
            matches!(r, Err(SsoError::NotConfigured(Provider::Oidc))),
            "{r:?}"
        );
    }
}
