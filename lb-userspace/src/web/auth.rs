//! Who may act from the status page: the holder of `web_admin_token`, from the page itself.
//!
//! The token travels only in an `Authorization: Bearer` header, which a cross-site form cannot
//! set and a cross-site script cannot send without a CORS preflight that lbd never grants. On
//! top of that a request a browser marks as coming from another site (`Sec-Fetch-Site`, or an
//! `Origin` other than the page's own) is refused. The token is never logged or printed: its
//! `Debug` hides it and the config does not serialize it.
use axum::http::{header, HeaderMap};

use crate::config::Invalid;

/// Shortest token accepted: guessing 16 random characters is out of reach.
pub const MIN_TOKEN_LEN: usize = 16;
/// Different characters a token must hold: `openssl rand -hex 16` gives 32 of about 14.
pub const MIN_DISTINCT: usize = 8;
/// Longest token accepted (it is sent with every action).
pub const MAX_TOKEN_LEN: usize = 256;

/// The `web_admin_token` of the config, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<hidden>)")
    }
}

impl AdminToken {
    /// Checks a token as written in the config. Errors never quote it.
    pub fn new(text: &str) -> Result<AdminToken, Invalid> {
        let problem =
            |message: String| Invalid { origin: None, line: None, field: "web_admin_token".into(), message };
        let how = "e.g. the 32 characters `openssl rand -hex 16` prints";
        if text.is_empty() {
            return Err(problem(format!(
                "is empty: remove the key for a read-only status page, or set a random token ({how})"
            )));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(problem(format!(
                "holds a space or a character other than printable ASCII (it travels in an HTTP header): use letters, digits and punctuation ({how})"
            )));
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(problem(format!(
                "has {} characters, fewer than {MIN_TOKEN_LEN}: use a longer random token ({how})",
                text.len()
            )));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(problem(format!(
                "has {} characters, more than {MAX_TOKEN_LEN}: use a shorter one ({how})",
                text.len()
            )));
        }
        let distinct = text.bytes().collect::<std::collections::BTreeSet<u8>>().len();
        if distinct < MIN_DISTINCT {
            return Err(problem(format!(
                "repeats {distinct} characters: a token of few different characters is guessed quickly, and nothing slows the guesses; use a random one ({how})"
            )));
        }
        Ok(AdminToken(text.to_owned()))
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        ours.len() == given.len() && ours.iter().zip(given).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// Why a request may not act.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a wrong or missing token: send the config's web_admin_token as `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("a request from another site (Origin {0}): actions are taken from lbd's own status page only")]
    CrossSite(String),
}

/// Allows a request that carries `token` and comes from the page itself (or from no browser at
/// all, e.g. curl, which sends no `Origin` or `Sec-Fetch-Site`).
pub fn authorize(token: &AdminToken, headers: &HeaderMap) -> Result<(), Refusal> {
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if fetch_site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        return Err(Refusal::CrossSite(shortened(origin)));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let authority = origin.split_once("://").map(|(_, a)| a);
        if authority.is_none() || authority != host {
            return Err(Refusal::CrossSite(shortened(origin)));
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(Refusal::Unauthorized)?;
    if !token.matches(bearer) {
        return Err(Refusal::Unauthorized);
    }
    Ok(())
}

/// A client's `Origin` as the refusal quotes it (in the log too): a header may be 400 KB.
fn shortened(origin: &str) -> String {
    const MAX: usize = 100;
    match origin.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &origin[..end]),
        None => origin.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_long_origin_is_quoted_short() {
        let long = format!("https://{}.example", "a".repeat(400_000));
        let quoted = super::shortened(&long);
        assert_eq!(quoted.chars().count(), 101, "{quoted}");
        assert!(quoted.starts_with("https://aaa") && quoted.ends_with('…'));
        assert_eq!(super::shortened("https://lb1:8443"), "https://lb1:8443");
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = AdminToken::new(TOKEN).expect("a good token");
        assert!(!format!("{token:?}").contains(TOKEN));
        for (bad, says) in [
            ("", "is empty"),
            ("short-token", "has 11 characters, fewer than 16"),
            ("with a space in it, long enough", "printable ASCII"),
            ("naïve-but-long-enough-token", "printable ASCII"),
            ("aaaaaaaaaaaaaaaaaaaa", "repeats 1 characters"),
            ("abcabcabcabcabcabcabc", "repeats 3 characters"),
        ] {
            let e = AdminToken::new(bad).unwrap_err();
            assert_eq!(e.field, "web_admin_token");
            assert!(e.message.contains(says), "{bad:?}: {e}");
            assert!(bad.is_empty() || !e.to_string().contains(bad), "the error quotes the token: {e}");
        }
        assert!(AdminToken::new(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn config_key() {
        let base = "metrics = \"127.0.0.1:9100\"\ninterfaces = [\"eth0\"]\n";
        let c = crate::config::parse(base, "t.toml").unwrap();
        assert_eq!(c.web_admin_token, None, "read-only by default");
        let c = crate::config::parse(&format!("{base}web_admin_token = \"{TOKEN}\"\n"), "t.toml").unwrap();
        assert_eq!(c.web_admin_token, Some(AdminToken::new(TOKEN).unwrap()));
        let e = crate::config::parse(&format!("{base}web_admin_token = \"\"\n"), "t.toml").unwrap_err();
        assert!(e.to_string().starts_with("t.toml:3: web_admin_token: is empty"), "{e}");
    }

    #[test]
    fn the_bearer_token_from_the_page_itself() {
        let token = AdminToken::new(TOKEN).unwrap();
        let bearer = format!("Bearer {TOKEN}");
        let ok = |h: &[(&'static str, &str)]| authorize(&token, &headers(h));
        // curl: no Origin, no Sec-Fetch-Site.
        assert_eq!(ok(&[("authorization", &bearer)]), Ok(()));
        // The page's own fetch.
        let page = [
            ("authorization", bearer.as_str()),
            ("host", "127.0.0.1:9100"),
            ("origin", "http://127.0.0.1:9100"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(ok(&page), Ok(()));
        assert_eq!(ok(&[("authorization", "Bearer 0123456789abcdef0124")]), Err(Refusal::Unauthorized));
        assert_eq!(ok(&[("authorization", "Bearer 0123456789abcdef012")]), Err(Refusal::Unauthorized));
        assert_eq!(ok(&[("authorization", TOKEN)]), Err(Refusal::Unauthorized), "no Bearer scheme");
        assert_eq!(ok(&[]), Err(Refusal::Unauthorized));
        // Another site, even with the token (a stolen one, or a confused browser).
        let mut other = page;
        other[3] = ("sec-fetch-site", "cross-site");
        assert!(matches!(ok(&other), Err(Refusal::CrossSite(_))));
        let mut other = page;
        other[2] = ("origin", "http://evil.example");
        other[3] = ("sec-fetch-site", "same-site");
        assert!(matches!(ok(&other), Err(Refusal::CrossSite(_))));
        let old_browser =
            [("authorization", bearer.as_str()), ("host", "127.0.0.1:9100"), ("origin", "null")];
        assert!(matches!(ok(&old_browser), Err(Refusal::CrossSite(_))));
    }
}
