//! The optional API key: `authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant time.
//!
//! Both adapters call [`ApiKey::check`] with the header values they received; health endpoints skip it (load
//! balancers and orchestrators probe them without credentials).
use std::sync::Arc;

use crate::error::ServiceError;

/// The configured key (or none: everything is open).
#[derive(Clone, Debug, Default)]
pub struct ApiKey(Option<Arc<[u8]>>);

impl ApiKey {
    /// The key to require (`None`: every request is accepted).
    pub fn new(key: Option<&str>) -> Self {
        ApiKey(key.map(|k| Arc::from(k.as_bytes())))
    }

    /// True when a key is configured.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Accepts the request when no key is configured, or when either header carries it.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        x_api_key: Option<&[u8]>,
    ) -> Result<(), ServiceError> {
        let Some(key) = &self.0 else { return Ok(()) };
        let bearer = authorization.and_then(|v| {
            let (scheme, rest) = (v.get(..7)?, v.get(7..)?);
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
        // Evaluate both candidates fully, so timing does not tell which header was checked either.
        let a = bearer.is_some_and(|v| ct_eq(v, key));
        let b = x_api_key.is_some_and(|v| ct_eq(v, key));
        if a | b {
            Ok(())
        } else {
            Err(ServiceError::Unauthenticated)
        }
    }
}

/// Constant-time equality: the time depends only on the lengths, never on where the bytes differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_either_header_and_rejects_the_rest() {
        let k = ApiKey::new(Some("s3cret-key"));
        assert!(k.check(Some(b"Bearer s3cret-key"), None).is_ok());
        assert!(k.check(Some(b"bearer s3cret-key"), None).is_ok());
        assert!(k.check(None, Some(b"s3cret-key")).is_ok());
        assert!(k.check(None, None).is_err());
        assert!(k.check(Some(b"Bearer s3cret-keyX"), None).is_err());
        assert!(k.check(Some(b"s3cret-key"), Some(b"nope")).is_err());
        assert!(ApiKey::new(None).check(None, None).is_ok());
        assert!(ct_eq(b"", b"") && !ct_eq(b"a", b"") && !ct_eq(b"ab", b"ac"));
    }
}
