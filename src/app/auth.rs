//! Optional bearer tokens for the `/v1` routes: `Authorization: Bearer
//! <token>` must match one of the configured tokens, compared in constant
//! time; otherwise 401. Tokens come from a file or the environment, never
//! from a flag (a command line is visible to every user of the host), and
//! are never logged.

/// The tokens a request may present.
pub struct Tokens {
    tokens: Vec<Vec<u8>>,
}

/// Shows how many tokens there are, never the tokens.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.tokens.len())
    }
}

/// The environment variable that may hold tokens, comma-separated.
pub const TOKENS_ENV: &str = "MILLRACE_AUTH_TOKENS";

impl Tokens {
    /// Tokens from `file` (one per line; blank lines and `#` comments
    /// skipped) and from [`TOKENS_ENV`]; `None` when neither names any.
    pub fn load(file: Option<&std::path::Path>) -> Result<Option<Tokens>, String> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read auth_tokens_file {}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec()),
            );
        }
        if let Ok(value) = std::env::var(TOKENS_ENV) {
            tokens.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.as_bytes().to_vec()),
            );
        }
        if let Some(bad) = tokens
            .iter()
            .position(|t| t.len() < 16 || !t.iter().all(u8::is_ascii_graphic))
        {
            return Err(format!(
                "auth token {} is shorter than 16 characters or has spaces or control characters",
                bad + 1
            ));
        }
        Ok((!tokens.is_empty()).then_some(Tokens { tokens }))
    }

    /// Tokens given directly (tests).
    pub fn new(tokens: &[&str]) -> Tokens {
        Tokens {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    /// Whether an `Authorization` header value carries a valid token. Every
    /// token is compared, each over its whole length, so the time taken
    /// does not depend on how much of a token matched.
    pub fn allow(&self, authorization: Option<&[u8]>) -> bool {
        let presented = authorization
            .and_then(|value| {
                let (scheme, rest) = value.split_at_checked(7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then_some(rest.trim_ascii())
            })
            .unwrap_or_default();
        let mut matched = 0u8;
        for token in &self.tokens {
            matched |= constant_time_eq(token, presented);
        }
        matched == 1
    }
}

/// 1 when equal, 0 otherwise; the comparison reads all of `expected`.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> u8 {
    let mut difference = u8::from(expected.len() != presented.len());
    for (i, &byte) in expected.iter().enumerate() {
        difference |= byte ^ presented.get(i).copied().unwrap_or(!byte);
    }
    u8::from(difference == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_bearer_token_passes() {
        let tokens = Tokens::new(&["0123456789abcdef", "fedcba9876543210xyz"]);
        assert!(tokens.allow(Some(b"Bearer 0123456789abcdef")));
        assert!(tokens.allow(Some(b"bearer fedcba9876543210xyz")));
        for bad in [
            &b"Bearer 0123456789abcdeF"[..],
            b"Bearer 0123456789abcde",
            b"Bearer 0123456789abcdef0",
            b"Basic 0123456789abcdef",
            b"Bearer ",
            b"Bear",
            b"",
        ] {
            assert!(!tokens.allow(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!tokens.allow(None));
    }

    #[test]
    fn tokens_load_from_a_file_and_short_ones_are_refused() {
        let path = std::env::temp_dir().join(format!("millrace-tokens-{}", std::process::id()));
        std::fs::write(
            &path,
            "# clients\n0123456789abcdef\n\n  fedcba9876543210  \n",
        )
        .unwrap();
        let tokens = Tokens::load(Some(&path)).unwrap().unwrap();
        assert!(tokens.allow(Some(b"Bearer fedcba9876543210")));
        std::fs::write(&path, "short\n").unwrap();
        assert!(Tokens::load(Some(&path)).unwrap_err().contains("token 1"));
        std::fs::remove_file(&path).unwrap();
        assert!(Tokens::load(Some(std::path::Path::new("/nonexistent/tokens"))).is_err());
    }
}
