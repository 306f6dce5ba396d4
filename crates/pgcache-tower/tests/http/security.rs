//! No response meant for one user is served to another.
//!
//! The origin echoes the user it saw (`user=` from `Authorization` or `Cookie`). For every combination
//! of credentials, response directives and layer options, alice asks first, then bob (same kind of
//! credentials) and an anonymous client ask for the same URL. Unless the response explicitly declared
//! itself shareable (`public`, `s-maxage`, `must-revalidate`: RFC 9111 §3.5), nobody but alice may
//! see `user=alice`, nor alice's `Set-Cookie`.

use axum::http::request::Parts;
use pgcache_tests::settings_for;
use pgcache_tower::{KeyScope, MakeKey, PgCacheLayer};

use crate::support::{get, node, scripted, Got, Origin};

#[derive(Clone, Copy, Debug)]
enum Creds {
    Anonymous,
    Authorization,
    Cookie,
    Header,
}

impl Creds {
    fn headers(self, user: &'static str) -> Vec<(&'static str, String)> {
        match self {
            Creds::Anonymous => vec![],
            Creds::Authorization => vec![("authorization", format!("Bearer {user}"))],
            Creds::Cookie => vec![("cookie", format!("session={user}"))],
            Creds::Header => vec![("x-user", user.to_owned())],
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Layer {
    Default,
    AllowCookies,
    KeyByUser,
}

/// The key hook of the matrix: the URI alone (as the default), or the URI and the `x-user` header.
#[derive(Clone, Copy)]
enum KeyBy {
    Uri,
    User,
}

impl MakeKey for KeyBy {
    fn make_key(&self, p: &Parts) -> Option<String> {
        match self {
            KeyBy::Uri => Some(String::new()),
            KeyBy::User => Some(p.headers.get("x-user")?.to_str().ok()?.to_owned()),
        }
    }
}

impl Layer {
    fn configure(self, l: PgCacheLayer) -> PgCacheLayer<KeyBy> {
        match self {
            Layer::Default => l.make_key(KeyScope::Extend, KeyBy::Uri),
            Layer::AllowCookies => l.allow_cookies(true).make_key(KeyScope::Extend, KeyBy::Uri),
            Layer::KeyByUser => l.make_key(KeyScope::Extend, KeyBy::User),
        }
    }
}

const RESPONSES: &[&[&str]] = &[
    &["cache-control: max-age=60"],
    &["cache-control: private, max-age=60"],
    &["cache-control: no-store"],
    &["cache-control: no-cache, max-age=60"],
    &["cache-control: max-age=60", "set-cookie: sid={n}"],
    &["cache-control: public, max-age=60", "set-cookie: sid={n}"],
    &["cache-control: max-age=60", "vary: Authorization, Cookie"],
    &["cache-control: s-maxage=60", "vary: Authorization"],
    &["cache-control: max-age=60", "vary: *"],
    &["cache-control: public, max-age=60"],
    &["cache-control: s-maxage=60"],
    &["cache-control: must-revalidate, max-age=60"],
    &["pgcache-control: max-age=60", "cache-control: private"],
];

/// Whether the response declares itself shareable for these credentials: only then may bob see it.
fn declared_shared(response: &[&str], creds: Creds, layer: Layer) -> bool {
    let text = response.join(",");
    let varies_on_creds = match creds {
        Creds::Authorization => text.contains("vary: Authorization") || text.contains("vary: *"),
        Creds::Cookie => text.contains("Cookie") || text.contains("vary: *"),
        Creds::Header | Creds::Anonymous => text.contains("vary: *"),
    };
    let uncacheable = text.contains("private") && !text.contains("pgcache-control")
        || text.contains("no-store")
        || text.contains("set-cookie")
        || varies_on_creds;
    if uncacheable {
        return false;
    }
    match (creds, layer) {
        // Keyed by user, or bypassed when there is no user header: never shared.
        (_, Layer::KeyByUser) => false,
        (Creds::Authorization, _) => {
            text.contains("public") || text.contains("s-maxage") || text.contains("must-revalidate")
        }
        (Creds::Cookie, Layer::AllowCookies) => true,
        (Creds::Cookie, _) => false,
        // A custom header nobody told the cache about: the app's own declaration makes it shared.
        (Creds::Header, _) => true,
        (Creds::Anonymous, _) => true,
    }
}

fn user_in(got: &Got) -> &str {
    got.body.split_whitespace().find_map(|w| w.strip_prefix("user=")).unwrap_or("?")
}

async fn ask(url: &str, creds: Creds, user: &'static str) -> Got {
    let headers = creds.headers(user);
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(url, &refs).await
}

#[tokio::test]
async fn no_response_leaks_between_users() {
    let mut checked = 0;
    for layer in [Layer::Default, Layer::AllowCookies, Layer::KeyByUser] {
        let origin = Origin::new();
        let settings = settings_for("security");
        let n = node(&settings, origin.router(), |l| layer.configure(l)).await;
        for creds in [Creds::Authorization, Creds::Cookie, Creds::Header] {
            for (i, response) in RESPONSES.iter().enumerate() {
                let url = n.url(&scripted(&format!("/{layer:?}/{creds:?}/{i}"), response));
                let case = format!("{layer:?} {creds:?} {response:?}");
                let alice = ask(&url, creds, "alice").await;
                let alice_cookie = alice.headers.get("set-cookie").cloned();
                let alice_again = ask(&url, creds, "alice").await;
                assert_eq!(user_in(&alice_again), if matches!(creds, Creds::Header) { "-" } else { "alice" }, "{case}");
                let bob = ask(&url, creds, "bob").await;
                let anonymous = ask(&url, Creds::Anonymous, "-").await;
                let shared = declared_shared(response, creds, layer);
                for (who, got) in [("bob", &bob), ("anonymous", &anonymous)] {
                    assert_eq!(got.status, 200, "{case}");
                    if alice_cookie.is_some() {
                        assert_ne!(
                            got.headers.get("set-cookie"),
                            alice_cookie.as_ref(),
                            "{case}: {who} got alice's cookie"
                        );
                    }
                    let leaked = user_in(got) == "alice";
                    if leaked {
                        assert!(shared, "{case}: {who} was served alice's response ({})", got.cache);
                    }
                }
                let revalidated = response.iter().any(|h| h.contains("no-cache"));
                if shared && !revalidated && !matches!(creds, Creds::Header) {
                    // Declared shareable: bob is served the stored copy (RFC 9111 §3.5).
                    assert_eq!(user_in(&bob), "alice", "{case}: expected the shared copy ({})", bob.cache);
                }
                checked += 1;
            }
        }
        // Responses that vary on credentials are told apart by digests: no credential is ever stored.
        let sql = pgcache_tests::sql_client(&settings.dsn).await.unwrap();
        let table = format!("\"{}cache_entries\"", settings.schema_prefix);
        let query = format!(
            "SELECT count(*) FROM {table} WHERE position($1::bytea in value) > 0 OR position($2::bytea in value) > 0 \
             OR position($3 in key) > 0"
        );
        let rows: i64 =
            sql.query_one(&query, &[&&b"Bearer alice"[..], &&b"session=alice"[..], &"alice"]).await.unwrap().get(0);
        assert_eq!(rows, 0, "{layer:?}: a credential reached the cache table");
        let stored: i64 = sql.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
        assert!(stored > 0);
    }
    assert_eq!(checked, 3 * 3 * RESPONSES.len());
}
