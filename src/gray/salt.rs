//! The per-rollout salt of the percent bucket (pure).
//!
//! A percent rollout puts a client in gray when its bucket (0..10000) is below `percent × 100`.
//! Without a salt the bucket is the FNV-1a hash of the user id (else the visitor id, else the IP)
//! — the same as before salts existed, so an upgrade does not reshuffle a rollout in progress.
//! With a salt it is SHA-256(salt, key): every salt picks its own, independent set of users, so
//! the next rollout does not land on the same first 5 % again. The salt is an operator's switch
//! (`[gray] salt`, the switches file, Consul `<prefix>salt`); only a digest of it is kept.

use sha2::{Digest, Sha256};

/// Longest salt accepted (a label such as `2026-11-checkout`, not a secret key).
pub const MAX_SALT_LEN: usize = 128;

/// A salt, as the digest of its text (so that it is `Copy` like the other switches).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Salt {
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Salt({})", self.label())
    }
}

impl Salt {
    /// No salt: buckets as before salts existed.
    pub const NONE: Salt = Salt { digest: None };

    /// The salt for `text` (empty: [`Salt::NONE`]). Check it with [`check`] first.
    pub fn new(text: &str) -> Salt {
        if text.is_empty() {
            return Salt::NONE;
        }
        let mut h = Sha256::new();
        h.update(b"graysplit-salt\0");
        h.update(text.as_bytes());
        Salt {
            digest: Some(h.finalize().into()),
        }
    }

    /// The bucket of `key` (a user id, visitor id or IP) in 0..10000.
    pub fn bucket(&self, key: &[u8]) -> u32 {
        let Some(salt) = &self.digest else {
            return super::decision::bucket(key);
        };
        let mut h = Sha256::new();
        h.update(salt);
        h.update(key);
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        (u64::from_be_bytes(first) % 10_000) as u32
    }

    /// A short name for logs: `none`, or the first 8 hex digits of the digest (the salt itself
    /// is not secret, but it is not needed in a log line either).
    pub fn label(&self) -> String {
        match &self.digest {
            None => "none".into(),
            Some(d) => d[..4].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The rule a salt's text breaks, if any: at most 128 bytes of printable ASCII.
pub fn check(text: &str) -> Option<&'static str> {
    if text.len() > MAX_SALT_LEN {
        Some("must be at most 128 characters")
    } else if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Some("must be printable ASCII")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_salt_keeps_the_buckets_of_before() {
        for key in ["user-42", "10.0.0.1", ""] {
            assert_eq!(
                Salt::NONE.bucket(key.as_bytes()),
                crate::gray::decision::bucket(key.as_bytes())
            );
        }
        assert_eq!(Salt::new(""), Salt::NONE);
        assert_eq!(Salt::NONE.label(), "none");
    }

    #[test]
    fn salts_are_stable_and_pick_independent_sets() {
        let (a, b) = (Salt::new("rollout-a"), Salt::new("rollout-b"));
        assert_eq!(a, Salt::new("rollout-a"));
        assert_ne!(a, b);
        assert_eq!(a.label().len(), 8);
        let n = 10_000;
        let in_a = |s: &Salt, i: usize| s.bucket(format!("visitor-{i}").as_bytes()) < 1_000;
        let (mut only_a, mut both) = (0, 0);
        for i in 0..n {
            match (in_a(&a, i), in_a(&b, i)) {
                (true, true) => both += 1,
                (true, false) => only_a += 1,
                _ => {}
            }
        }
        // 10 % each; independent salts share about 10 % of 10 % = 1 % of users.
        assert!(
            (850..=1_150).contains(&(only_a + both)),
            "{}",
            only_a + both
        );
        assert!((50..=160).contains(&both), "overlap {both}");
    }

    #[test]
    fn salt_text_rules() {
        assert_eq!(check("2026-11 checkout"), None);
        assert!(check(&"x".repeat(129)).is_some());
        assert!(check("tab\there").is_some());
    }
}
