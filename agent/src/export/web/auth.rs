//! HTTP basic auth against `basic_auth_users`, and the headers of
//! `http_server_config`, as an axum middleware around every route.

use std::{
    collections::{BTreeMap, HashSet},
    io::BufRead,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use tokio::sync::Semaphore;

use super::{Shared, collector::Served};
use crate::locks::lock;

/// Checked against when the user is unknown, so that an unknown user takes
/// as long as a wrong password and user names cannot be probed by timing.
/// A bcrypt hash (cost 10) of a random password nobody kept.
const DECOY_HASH: &str = "$2b$10$4geXPUQdhBtiZrTaU284buqz/11.l/XMpHuwUtRKK5nq1DcxT2HMS";

/// Successful verifications remembered; the set is emptied when full.
/// Prometheus sends the same credentials every scrape: only the first
/// costs a bcrypt verification.
const CACHE_MAX: usize = 256;

/// The cost `sockerr hash-password` uses (htpasswd's and Go's default):
/// about 50–100 ms per verification, once per client thanks to the cache.
const COST: u32 = 10;

/// How long a request waits for the bcrypt slot before it is answered 503:
/// a request in the queue holds a connection, so a flood of wrong passwords
/// must not hold connections (up to `--web.max-connections`) for as long as
/// it can keep the queue full.
const BCRYPT_WAIT: Duration = Duration::from_secs(1);

/// Requests waiting for the bcrypt slot at once; more are answered 503 at
/// once, so a flood holds at most this many connections waiting.
const BCRYPT_QUEUE: usize = 16;

/// Answered without authentication, on purpose: the kubelet's liveness
/// and readiness probes carry no credentials, and "ok" (the collector
/// answers) tells nothing about the host.
const UNAUTHENTICATED_PATH: &str = "/healthz";

pub struct Verifier {
    /// SHA-256 of (user, stored hash, password) of verified credentials:
    /// no password is kept in memory, and a changed hash misses the cache.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// One bcrypt verification at a time: a flood of wrong passwords can
    /// take one core, never every core, and /metrics keeps answering
    /// clients whose credentials are cached. The permit goes with the
    /// verification, so a client hanging up cannot start another meanwhile.
    bcrypt: Arc<Semaphore>,
    wait: Duration,
    /// Places to wait for `bcrypt` ([`BCRYPT_QUEUE`]); a permit, not a
    /// count, so a request dropped while waiting gives its place back.
    queue: Semaphore,
}

/// What a request's credentials earned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Allowed,
    Denied,
    /// Not verified: [`BCRYPT_QUEUE`] requests were waiting already, or the
    /// bcrypt slot stayed busy for [`BCRYPT_WAIT`].
    Busy,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            verified: Mutex::default(),
            bcrypt: Arc::new(Semaphore::new(1)),
            wait: BCRYPT_WAIT,
            queue: Semaphore::new(BCRYPT_QUEUE),
        }
    }
}

impl Verifier {
    fn cached(&self, key: &[u8; 32]) -> bool {
        lock(&self.verified).contains(key)
    }

    /// Whether the request's basic-auth credentials name a user whose
    /// bcrypt hash matches the password.
    async fn check(&self, users: &BTreeMap<String, String>, headers: &HeaderMap) -> Verdict {
        let Some((user, password)) = credentials(headers) else {
            return Verdict::Denied;
        };
        let stored = users.get(&user);
        let hash = stored.map_or(DECOY_HASH, String::as_str);
        let key = cache_key(&user, hash, &password);
        if stored.is_some() && self.cached(&key) {
            return Verdict::Allowed;
        }
        let Ok(place) = self.queue.try_acquire() else {
            return Verdict::Busy;
        };
        let permit = tokio::time::timeout(self.wait, self.bcrypt.clone().acquire_owned()).await;
        drop(place);
        let Ok(Ok(permit)) = permit else {
            return Verdict::Busy;
        };
        // Concurrent requests with the same credentials (a scrape and a
        // retry) wait for one verification, not one each.
        if stored.is_some() && self.cached(&key) {
            return Verdict::Allowed;
        }
        // Slow on purpose (tens of milliseconds): off the runtime thread.
        let hash = hash.to_owned();
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash)
        })
        .await
        .is_ok_and(|r| r.unwrap_or(false));
        if !(matched && stored.is_some()) {
            return Verdict::Denied;
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= CACHE_MAX {
            verified.clear();
        }
        verified.insert(key);
        Verdict::Allowed
    }
}

fn cache_key(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so that no two triples hash the same bytes.
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// (user, password) of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The web configuration a TLS connection's handshake was just made
/// under: its first request starts under it.
#[derive(Clone)]
pub struct Fresh(pub Arc<Served>);

impl Verifier {
    async fn verdict(&self, active: &Served, path: &str, headers: &HeaderMap) -> Verdict {
        if active.users().is_empty() || path == UNAUTHENTICATED_PATH {
            return Verdict::Allowed;
        }
        self.check(active.users(), headers).await
    }
}

/// The middleware: authenticates when users are configured, then adds the
/// configured headers to the response (401s included).
///
/// Every answer with something of the collector's in it (metrics,
/// findings, health) is given under the web configuration as its files
/// stand after the request came, at no cost of its own: the collector
/// looks at the files before it answers anything, and sends a new
/// configuration ahead of its answer. So a request is let in under the
/// configuration the server has; once answered, if the configuration
/// changed meanwhile, its credentials must pass under the new one too. A
/// request refused under the one the server has is asked about again under
/// a fresh one (a new password works at once). What the server answers on
/// its own (the landing page, a 404, a 503 past `--web.max-requests`)
/// waits for nothing.
pub async fn guard(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let collector = &shared.collector;
    let since = collector.mark();
    let path = request.uri().path().to_owned();
    let mut active = match request.extensions_mut().remove::<Fresh>() {
        Some(Fresh(served)) => served,
        None => collector.served(),
    };
    let mut verdict = shared
        .verifier
        .verdict(&active, &path, request.headers())
        .await;
    if verdict != Verdict::Allowed {
        active = collector.current().await;
        verdict = shared
            .verifier
            .verdict(&active, &path, request.headers())
            .await;
    }
    let credentials = request.headers().get(header::AUTHORIZATION).cloned();
    let mut response = match verdict {
        Verdict::Allowed => next.run(request).await,
        Verdict::Denied => unauthorized(),
        Verdict::Busy => busy(),
    };
    if verdict == Verdict::Allowed && collector.checked_since(since) {
        let now = collector.served();
        if !Arc::ptr_eq(&now, &active) {
            let mut headers = HeaderMap::new();
            if let Some(credentials) = credentials {
                headers.insert(header::AUTHORIZATION, credentials);
            }
            response = match shared.verifier.verdict(&now, &path, &headers).await {
                Verdict::Allowed => response,
                Verdict::Denied => unauthorized(),
                Verdict::Busy => busy(),
            };
            active = now;
        }
    }
    response.headers_mut().extend(active.headers().clone());
    response
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sockerr\""),
            ),
            // A client that cannot authenticate gets no kept-alive
            // connection to hold on to.
            (header::CONNECTION, HeaderValue::from_static("close")),
        ],
        "Unauthorized\n",
    )
        .into_response()
}

/// Credentials not checked in time: try again (Prometheus does, next scrape).
fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, HeaderValue::from_static("1")),
            (header::CONNECTION, HeaderValue::from_static("close")),
        ],
        "Too many authentications at once\n",
    )
        .into_response()
}

/// `sockerr hash-password`: the bcrypt hash of the password on the first
/// line of standard input, for `basic_auth_users`.
pub fn hash_password(input: impl BufRead) -> Result<String> {
    let line = input
        .lines()
        .next()
        .context("no password on standard input")?
        .context("reading the password")?;
    if line.is_empty() {
        bail!("empty password");
    }
    Ok(bcrypt::hash(line, COST)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(raw).unwrap());
        h
    }

    #[test]
    fn credentials_follow_rfc_7617() {
        // "prometheus:pa:ss" — the password may contain colons.
        assert_eq!(
            credentials(&basic("Basic cHJvbWV0aGV1czpwYTpzcw==")),
            Some(("prometheus".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            credentials(&basic("basic cHJvbWV0aGV1czpwYTpzcw==")),
            Some(("prometheus".into(), b"pa:ss".to_vec()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic bm9jb2xvbg==", "Basic"] {
            assert_eq!(credentials(&basic(bad)), None, "{bad}");
        }
        assert_eq!(credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn hashes_verify_and_the_decoy_is_one() {
        let hash = hash_password("s3cret\nignored\n".as_bytes()).unwrap();
        assert!(hash.starts_with("$2b$10$"), "{hash}");
        assert!(bcrypt::verify("s3cret", &hash).unwrap());
        assert!(hash_password("\n".as_bytes()).is_err());
        assert!(hash_password("".as_bytes()).is_err());
        assert_eq!(
            DECOY_HASH.parse::<bcrypt::HashParts>().unwrap().get_cost(),
            COST
        );
        // From `htpasswd -nbBC 10 "" pw | tr -d ':\n'` (apache2-utils).
        assert!(
            bcrypt::verify(
                "pw",
                "$2y$10$QuRSktGJPUMvjhzhAkiYYub3IoKwXmPSFAiWNLtHofK..UknWWghS"
            )
            .unwrap()
        );
    }

    #[tokio::test]
    async fn only_matching_credentials_pass_successes_are_cached_and_waits_are_bounded() {
        let users = BTreeMap::from([("u".to_owned(), bcrypt::hash("pw", 4).unwrap())]);
        let verifier = Verifier::default();
        let header = |user: &str, pw: &str| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            basic(&format!("Basic {encoded}"))
        };
        let denied = Verdict::Denied;
        assert_eq!(verifier.check(&users, &header("u", "wrong")).await, denied);
        assert_eq!(
            verifier.check(&users, &header("nobody", "pw")).await,
            denied
        );
        assert_eq!(verifier.check(&users, &HeaderMap::new()).await, denied);
        assert!(
            lock(&verifier.verified).is_empty(),
            "failures are not cached"
        );
        assert_eq!(
            verifier.check(&users, &header("u", "pw")).await,
            Verdict::Allowed
        );
        assert_eq!(lock(&verifier.verified).len(), 1);
        // The same password against another hash (a reload changed it) is
        // verified again, and fails.
        let changed = BTreeMap::from([("u".to_owned(), bcrypt::hash("new", 4).unwrap())]);
        assert_eq!(verifier.check(&changed, &header("u", "pw")).await, denied);
        assert_eq!(
            verifier.check(&changed, &header("u", "new")).await,
            Verdict::Allowed
        );
        // While the bcrypt slot is taken, uncached credentials get no
        // answer but "busy" once the wait is over; cached ones pass.
        let verifier = Verifier {
            wait: Duration::from_millis(50),
            ..Verifier::default()
        };
        assert_eq!(
            verifier.check(&changed, &header("u", "new")).await,
            Verdict::Allowed
        );
        let held = verifier.bcrypt.acquire().await.unwrap();
        assert_eq!(
            verifier.check(&changed, &header("u", "other")).await,
            Verdict::Busy
        );
        assert_eq!(
            verifier.check(&changed, &header("u", "new")).await,
            Verdict::Allowed
        );
        drop(held);
        // With the queue full: answered at once, not after the (here
        // hour-long) wait for the slot.
        let patient = Verifier {
            wait: Duration::from_secs(3600),
            ..Verifier::default()
        };
        let _slot = patient.bcrypt.acquire().await.unwrap();
        let _full = patient.queue.try_acquire_many(BCRYPT_QUEUE as u32).unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            patient.check(&changed, &header("u", "other")),
        )
        .await;
        assert_eq!(answer.ok(), Some(Verdict::Busy));
        assert_eq!(
            verifier.check(&changed, &header("u", "other")).await,
            denied
        );
    }
}
