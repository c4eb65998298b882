//! An IP address as text, as `Display` writes it, without the formatting machinery for IPv4
//! (nearly every client): the access log and the forwarded headers write one per request.

use std::io::Write;
use std::net::IpAddr;

/// Appends `ip` to `out` exactly as `ip.to_string()` would.
pub fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_writes_what_display_writes(ip in any::<IpAddr>()) {
            let mut out = b"x".to_vec();
            write_ip(ip, &mut out);
            let want = ip.to_string();
            prop_assert_eq!(&out[1..], want.as_bytes());
        }
    }

    #[test]
    fn edges_of_each_octet() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("9.10.99.100", "9.10.99.100"),
            ("255.1.200.7", "255.1.200.7"),
        ] {
            let mut out = Vec::new();
            write_ip(ip.parse().unwrap(), &mut out);
            assert_eq!(out, text.as_bytes());
        }
    }
}
