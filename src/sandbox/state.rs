//! The sandbox platform's bookkeeping: clients, seeded users, and every token and code it
//! issued, with the strict single-use rules of the real platform. Synchronous and free of
//! HTTP, so the rules read in one place (which is why it is one file of some 500 lines:
//! every grant's single-use rule and the state it checks, together).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use rand::RngCore;
use serde::Serialize;
use tokio::time::Instant;

use super::{
    SandboxConfig, SandboxUser,
    faults::{Fault, FaultRule, RequestKind},
};

/// Requests the sandbox saw, by kind, and every single-use violation. Tests assert on these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Token endpoint requests with `grant_type=client_credentials`.
    pub client_credentials: u64,
    /// Token endpoint requests with `grant_type=refresh_token`.
    pub refresh_token: u64,
    /// Token endpoint requests with `grant_type=authorization_code`.
    pub authorization_code: u64,
    /// Requests to the authorization grant endpoint.
    pub authorization_grant: u64,
    /// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` requests (RFC 8693).
    pub token_exchange: u64,
    /// Requests to the platform's API (`/api/v1/...`).
    pub api: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Refresh tokens presented after they were already used (each one a broker bug).
    pub refresh_token_reuse: u64,
    /// Authorization codes presented after they were already used.
    pub code_reuse: u64,
    /// Requests answered 429 by a [`Fault::Throttle`].
    pub throttled: u64,
    /// Body bytes received by uploads so far, counted as they arrive.
    pub upload_bytes: u64,
}

impl Stats {
    /// All requests to the token and grant endpoints.
    pub fn upstream_requests(&self) -> u64 {
        self.client_credentials
            + self.refresh_token
            + self.authorization_code
            + self.authorization_grant
            + self.token_exchange
    }
}

/// The `subject_token_type` of a token exchange whose subject is a user id.
pub const USER_ID_TOKEN_TYPE: &str = "urn:tokenbroker:params:oauth:token-type:user-id";

/// Who a token acts as.
#[derive(Debug, Clone)]
pub enum Subject {
    Org {
        org: Arc<str>,
    },
    User {
        org: Arc<str>,
        user: Arc<SandboxUser>,
    },
}

impl Subject {
    fn org(&self) -> &Arc<str> {
        match self {
            Subject::Org { org } | Subject::User { org, .. } => org,
        }
    }
}

#[derive(Debug)]
struct Issued {
    subject: Subject,
    family: u64,
    expires: Instant,
}

#[derive(Debug)]
struct Refresh {
    subject: Subject,
    family: u64,
    used: bool,
    revoked: bool,
}

#[derive(Debug)]
struct Code {
    org: Arc<str>,
    user: Arc<SandboxUser>,
    expires: Instant,
    used: bool,
}

struct Client {
    org: Arc<str>,
    secret: String,
    /// The public P-256 point of its `private_key_jwt` key, if it has one.
    key: Option<Vec<u8>>,
}

/// A token endpoint answer: a new token pair.
#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    /// Left out when the sandbox plays a server that omits it (it is only RECOMMENDED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    pub refresh_token: String,
    /// The scope granted, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// An OAuth error answer (RFC 6749 §5.2) with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OauthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

fn oauth_error(status: u16, error: &'static str, description: impl Into<String>) -> OauthError {
    OauthError {
        status,
        error,
        description: description.into(),
    }
}

/// Everything the sandbox platform knows.
pub struct State {
    token_lifetime: Duration,
    /// Client authentication demanded on refresh and code exchange too.
    strict_client_auth: bool,
    /// Token answers without `expires_in`.
    omit_expires_in: bool,
    /// The scopes a client may ask for; empty: any.
    scopes: Vec<String>,
    /// The last token request: its form fields (secrets and tokens as `***`) and, as
    /// `header:NAME`, its headers other than Authorization.
    pub last_token_request: Vec<(String, String)>,
    code_lifetime: Duration,
    clients: HashMap<String, Client>,
    users: HashMap<(Arc<str>, String), Arc<SandboxUser>>,
    access: HashMap<String, Issued>,
    refresh: HashMap<String, Refresh>,
    codes: HashMap<String, Code>,
    revoked_families: HashSet<u64>,
    /// The `jti` of each client assertion accepted, until its `exp` (Unix seconds): each
    /// works once, and an expired one is refused anyway, so that is all it needs to keep.
    assertion_ids: HashMap<String, u64>,
    /// The theoretical arrival time of a [`Fault::Throttle`]'s bucket.
    throttle_tat: Instant,
    next_family: u64,
    faults: Vec<FaultRule>,
    /// Person ids of users removed from the platform: their tokens stop working.
    removed_users: HashSet<String>,
    pub stats: Stats,
}

impl State {
    pub fn new(config: &SandboxConfig) -> Self {
        let mut clients = HashMap::new();
        let mut users = HashMap::new();
        for org in &config.orgs {
            let name: Arc<str> = org.name.as_str().into();
            clients.insert(
                org.client_id.clone(),
                Client {
                    org: Arc::clone(&name),
                    secret: org.client_secret.clone(),
                    key: config.client_keys.get(&org.client_id).cloned(),
                },
            );
            for user in org.users() {
                let user = Arc::new(user);
                users.insert(
                    (Arc::clone(&name), user.person_id.clone()),
                    Arc::clone(&user),
                );
                users.insert((Arc::clone(&name), user.external_id.clone()), user);
            }
        }
        Self {
            strict_client_auth: config.strict_client_auth,
            omit_expires_in: config.omit_expires_in,
            scopes: config.scopes.clone(),
            last_token_request: Vec::new(),
            token_lifetime: config.token_lifetime,
            code_lifetime: config.code_lifetime,
            clients,
            users,
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            revoked_families: HashSet::new(),
            assertion_ids: HashMap::new(),
            throttle_tat: Instant::now(),
            next_family: 0,
            faults: Vec::new(),
            removed_users: HashSet::new(),
            stats: Stats::default(),
        }
    }

    /// The scope granted for `asked`: all of it, if every scope is allowed.
    pub fn grant_scope(&self, asked: Option<&str>) -> Result<Option<String>, OauthError> {
        let Some(asked) = asked else {
            return Ok(None);
        };
        if let Some(bad) = asked
            .split(' ')
            .find(|s| !self.scopes.is_empty() && !self.scopes.iter().any(|a| a == s))
        {
            return Err(oauth_error(
                400,
                "invalid_scope",
                format!("scope {bad:?} is not allowed for this client"),
            ));
        }
        Ok(Some(asked.to_owned()))
    }

    /// `grant_type=client_credentials`.
    pub fn client_credentials(
        &mut self,
        client_id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<TokenPair, OauthError> {
        self.stats.client_credentials += 1;
        let org = match (client_id.and_then(|id| self.clients.get(id)), secret) {
            (Some(client), Some(secret)) if client.secret == secret => Arc::clone(&client.org),
            _ => {
                return Err(oauth_error(
                    401,
                    "invalid_client",
                    "unknown client or wrong client secret",
                ));
            }
        };
        let family = self.new_family();
        Ok(self.issue(Subject::Org { org }, family))
    }

    /// Checks a `private_key_jwt` client assertion sent to the token endpoint at
    /// `audiences` (its URL and the issuer); answers the client id and its secret, which
    /// the grants then check as if it had been sent (the assertion proved the client).
    pub fn assertion_client(
        &mut self,
        assertion: &str,
        audiences: &[String],
    ) -> Result<(String, String), OauthError> {
        let rejected = |why: String| OauthError {
            status: 401,
            error: "invalid_client",
            description: why,
        };
        let id = super::assertion::client_of(assertion)
            .ok_or_else(|| rejected("the client assertion names no client".into()))?;
        let Some(client) = self.clients.get(&id) else {
            return Err(rejected("unknown client".into()));
        };
        let Some(key) = &client.key else {
            return Err(rejected(
                "the client has no key registered for private_key_jwt".into(),
            ));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = super::assertion::verify(assertion, key, audiences, now).map_err(rejected)?;
        if self.assertion_ids.contains_key(&claims.jti) {
            return Err(rejected("the client assertion was already used".into()));
        }
        if self.assertion_ids.len() >= 1024 {
            self.assertion_ids.retain(|_, exp| *exp > now);
        }
        self.assertion_ids.insert(claims.jti, claims.exp);
        Ok((claims.client_id, client.secret.clone()))
    }

    /// The org of the client a refresh or token exchange names, once its authentication
    /// is checked.
    fn client_org(
        &self,
        client_id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Arc<str>, OauthError> {
        let Some(client) = client_id.and_then(|id| self.clients.get(id)) else {
            return Err(oauth_error(
                401,
                "invalid_client",
                "client_id is missing or unknown",
            ));
        };
        let org = Arc::clone(&client.org);
        self.authenticated(client_id, secret)?;
        Ok(org)
    }

    /// Checks a client's authentication on a refresh or code exchange: a secret sent must
    /// be the client's; none sent is refused only when strict (a standard server).
    fn authenticated(
        &self,
        client_id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(), OauthError> {
        let client = client_id.and_then(|id| self.clients.get(id));
        match (client, secret) {
            (Some(client), Some(secret)) if client.secret == secret => Ok(()),
            (Some(_), None) if !self.strict_client_auth => Ok(()),
            (_, None) => Err(oauth_error(
                401,
                "invalid_client",
                "client authentication is required",
            )),
            _ => Err(oauth_error(
                401,
                "invalid_client",
                "unknown client or wrong client secret",
            )),
        }
    }

    /// `grant_type=refresh_token`: each refresh token works once; a second use revokes the
    /// whole token family (RFC 9700 §4.14.2) and is counted.
    pub fn refresh(
        &mut self,
        client_id: Option<&str>,
        secret: Option<&str>,
        refresh_token: Option<&str>,
    ) -> Result<TokenPair, OauthError> {
        self.stats.refresh_token += 1;
        let client_org = self.client_org(client_id, secret)?;
        let Some(record) = refresh_token.and_then(|t| self.refresh.get_mut(t)) else {
            return Err(oauth_error(400, "invalid_grant", "unknown refresh token"));
        };
        if record.used {
            let family = record.family;
            self.stats.refresh_token_reuse += 1;
            self.revoked_families.insert(family);
            return Err(oauth_error(
                400,
                "invalid_grant",
                "refresh token already used; its token family is revoked",
            ));
        }
        if record.revoked || self.revoked_families.contains(&record.family) {
            return Err(oauth_error(400, "invalid_grant", "refresh token revoked"));
        }
        if let Subject::User { user, .. } = &record.subject
            && self.removed_users.contains(&user.person_id)
        {
            return Err(oauth_error(400, "invalid_grant", "the user was removed"));
        }
        if record.subject.org() != &client_org {
            return Err(oauth_error(
                400,
                "invalid_grant",
                "refresh token was issued to another client",
            ));
        }
        record.used = true;
        let (subject, family) = (record.subject.clone(), record.family);
        Ok(self.issue(subject, family))
    }

    /// `grant_type=authorization_code`: each code works once and only for a short time.
    pub fn exchange_code(
        &mut self,
        client_id: Option<&str>,
        secret: Option<&str>,
        code: Option<&str>,
    ) -> Result<TokenPair, OauthError> {
        self.stats.authorization_code += 1;
        let now = Instant::now();
        let client_org = match client_id {
            None => None,
            Some(id) => match self.clients.get(id) {
                Some(client) => Some(Arc::clone(&client.org)),
                None => return Err(oauth_error(401, "invalid_client", "unknown client_id")),
            },
        };
        if client_id.is_some() || self.strict_client_auth {
            self.authenticated(client_id, secret)?;
        }
        let Some(record) = code.and_then(|c| self.codes.get_mut(c)) else {
            return Err(oauth_error(
                400,
                "invalid_grant",
                "unknown authorization code",
            ));
        };
        if record.used {
            self.stats.code_reuse += 1;
            return Err(oauth_error(
                400,
                "invalid_grant",
                "authorization code already used",
            ));
        }
        record.used = true;
        if now >= record.expires {
            return Err(oauth_error(
                400,
                "invalid_grant",
                "authorization code expired",
            ));
        }
        if client_org.is_some_and(|org| org != record.org) {
            return Err(oauth_error(
                400,
                "invalid_grant",
                "code was issued to another client",
            ));
        }
        let subject = Subject::User {
            org: Arc::clone(&record.org),
            user: Arc::clone(&record.user),
        };
        let family = self.new_family();
        Ok(self.issue(subject, family))
    }

    /// The authorization grant endpoint: a code acting as `user_id`, for a live org token.
    /// RFC 8693 token exchange for a user token: the subject is the user (person id or
    /// ExternalSourceID, `subject_token_type` [`USER_ID_TOKEN_TYPE`]), the actor the org's
    /// access token; the client authenticates as on any token request.
    pub fn token_exchange(
        &mut self,
        client_id: Option<&str>,
        secret: Option<&str>,
        subject: Option<&str>,
        subject_type: Option<&str>,
        actor: Option<&str>,
    ) -> Result<TokenPair, OauthError> {
        self.stats.token_exchange += 1;
        let client_org = self.client_org(client_id, secret)?;
        if subject_type != Some(USER_ID_TOKEN_TYPE) {
            return Err(oauth_error(
                400,
                "invalid_request",
                "subject_token_type must be urn:tokenbroker:params:oauth:token-type:user-id",
            ));
        }
        match self.authenticate(actor) {
            Some(Subject::Org { org }) if org == client_org => {}
            _ => {
                return Err(oauth_error(
                    400,
                    "invalid_grant",
                    "actor_token is not a valid org token of this client",
                ));
            }
        }
        let Some(user) = subject.and_then(|id| {
            self.users
                .get(&(Arc::clone(&client_org), id.to_owned()))
                .cloned()
        }) else {
            return Err(oauth_error(
                400,
                "invalid_grant",
                "unknown user (subject_token)",
            ));
        };
        let subject = Subject::User {
            org: client_org,
            user,
        };
        let family = self.new_family();
        Ok(self.issue(subject, family))
    }

    pub fn authorization_grant(
        &mut self,
        bearer: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<String, OauthError> {
        self.stats.authorization_grant += 1;
        let org = match self.authenticate(bearer) {
            Some(Subject::Org { org }) => org,
            Some(Subject::User { .. }) => {
                return Err(oauth_error(
                    403,
                    "insufficient_scope",
                    "a user token cannot create authorization codes",
                ));
            }
            None => {
                return Err(oauth_error(
                    401,
                    "invalid_token",
                    "missing, unknown or expired org token",
                ));
            }
        };
        let Some(user_id) = user_id.filter(|u| !u.is_empty()) else {
            return Err(oauth_error(400, "invalid_request", "user_id is required"));
        };
        let Some(user) = self
            .users
            .get(&(Arc::clone(&org), user_id.to_owned()))
            .cloned()
        else {
            return Err(oauth_error(
                404,
                "user_not_found",
                "no user with this person id or ExternalSourceID",
            ));
        };
        let code = random_hex(16);
        let expires = Instant::now() + self.code_lifetime;
        self.codes.insert(
            code.clone(),
            Code {
                org,
                user,
                expires,
                used: false,
            },
        );
        Ok(code)
    }

    /// Who a bearer token acts as, if it is live.
    pub fn authenticate(&self, bearer: Option<&str>) -> Option<Subject> {
        let issued = self.access.get(bearer?)?;
        let now = Instant::now();
        let revoked = self.revoked_families.contains(&issued.family)
            || matches!(&issued.subject, Subject::User { user, .. } if self.removed_users.contains(&user.person_id));
        (now < issued.expires && !revoked).then(|| issued.subject.clone())
    }

    /// Makes every refresh token issued so far unusable (as a server-side revocation
    /// would); access tokens stay valid until they expire.
    pub fn revoke_refresh_tokens(&mut self) {
        for record in self.refresh.values_mut() {
            record.revoked = true;
        }
    }

    /// Removes a user (by person id or ExternalSourceID) from `org`: no new codes, and its
    /// tokens and refresh tokens stop working. False if there is no such user.
    pub fn remove_user(&mut self, org: &str, id: &str) -> bool {
        let Some(user) = self.users.get(&(Arc::from(org), id.to_owned())).cloned() else {
            return false;
        };
        self.users.retain(|_, u| u.person_id != user.person_id);
        self.removed_users.insert(user.person_id.clone());
        true
    }

    /// Revokes a client: its secret and refresh tokens stop working (`invalid_client`);
    /// access tokens already issued work until they expire.
    pub fn revoke_client(&mut self, client_id: &str) -> bool {
        self.clients.remove(client_id).is_some()
    }

    /// Every access token, refresh token and code issued and still on record, for tests
    /// that check none of them leaked (expired access tokens may have been forgotten).
    pub fn issued_secrets(&self) -> Vec<String> {
        self.access
            .keys()
            .chain(self.refresh.keys())
            .chain(self.codes.keys())
            .cloned()
            .collect()
    }

    /// Adds a fault; the earliest added rule that hits a request applies.
    pub fn inject(&mut self, rule: FaultRule) {
        self.faults.push(rule);
    }

    pub fn faults_left(&self) -> usize {
        self.faults.len()
    }

    /// Removes every fault.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The fault for a request of `kind`, if any; counts down rules with a limit.
    pub fn fault_for(&mut self, kind: RequestKind) -> Option<Fault> {
        let i = self.faults.iter().position(|r| r.target.hits(kind))?;
        let fault = self.faults[i].fault.clone();
        if let Some(times) = &mut self.faults[i].times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.faults.remove(i);
            }
        }
        Some(fault)
    }

    /// Whether a request may pass a [`Fault::Throttle`] of `per_second` and `burst` at
    /// `now` (GCRA over the requests it targets).
    pub fn passes_throttle(&mut self, per_second: u32, burst: u32, now: Instant) -> bool {
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let tolerance = interval * burst.max(1).saturating_sub(1);
        let tat = self.throttle_tat.max(now);
        if tat - now > tolerance {
            self.stats.throttled += 1;
            return false;
        }
        self.throttle_tat = tat + interval;
        true
    }

    /// Counts a request of `kind` that a fault answered before any work was done.
    pub fn count(&mut self, kind: RequestKind) {
        let counter = match kind {
            RequestKind::ClientCredentials => &mut self.stats.client_credentials,
            RequestKind::RefreshToken => &mut self.stats.refresh_token,
            RequestKind::AuthorizationCode => &mut self.stats.authorization_code,
            RequestKind::AuthorizationGrant => &mut self.stats.authorization_grant,
            RequestKind::OtherToken => return,
        };
        *counter += 1;
    }

    /// Makes every access token issued so far unusable.
    pub fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }

    /// Makes one access token unusable (401 on use), as the platform does when a user signs
    /// out or an administrator revokes a session; its refresh token still works. False if
    /// the sandbox never issued it (or has forgotten it after it expired).
    pub fn revoke_access_token(&mut self, token: &str) -> bool {
        self.access.remove(token).is_some()
    }

    fn new_family(&mut self) -> u64 {
        self.next_family += 1;
        self.next_family
    }

    fn issue(&mut self, subject: Subject, family: u64) -> TokenPair {
        let now = Instant::now();
        // Forget expired access tokens now and then, so a long soak stays bounded.
        if self.access.len() >= 1024 && self.access.len().is_power_of_two() {
            self.access.retain(|_, t| t.expires > now);
        }
        let access_token = random_hex(64);
        let refresh_token = refresh_token_text();
        self.access.insert(
            access_token.clone(),
            Issued {
                subject: subject.clone(),
                family,
                expires: now + self.token_lifetime,
            },
        );
        self.refresh.insert(
            refresh_token.clone(),
            Refresh {
                subject,
                family,
                used: false,
                revoked: false,
            },
        );
        TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: (!self.omit_expires_in).then(|| self.token_lifetime.as_secs().max(1)),
            refresh_token,
            scope: None,
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refresh token like the platform's (`9MXOgvKAvB+tUSdCtML9u...`): it always holds `+`,
/// `/` and `=`, so a client that does not form-encode it fails here as it would there.
fn refresh_token_text() -> String {
    let body = random_hex(24);
    format!("{}+{}/{}=", &body[..16], &body[16..32], &body[32..])
}
