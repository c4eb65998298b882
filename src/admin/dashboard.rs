//! The dashboard at `/`: one HTML page and one script, compiled into the binary
//! (`include_str!`), nothing fetched from elsewhere at run time.
//!
//! The page reads `/status?format=json` every 2 s (`/?refresh=500ms` or `?refresh=10s` to
//! change that) and `/rollout`, and draws what it reads: pools and servers (address, build,
//! weight, health, passive state, in-flight), the switches and where they came from, requests by
//! pool, build and reason, and pins. The charts (requests per second and 5xx share per pool and
//! build) are computed in the browser from the growing counters between two reads and keep the
//! last 10 minutes the page has been open — no second set of counters in the proxy.
//!
//! The script fills the page through DOM text nodes only, never HTML strings, and the Content
//! Security Policy allows nothing but this origin's script and data: a server name or build id
//! can never run as code in an operator's browser.

use http::{Response, StatusCode};

/// The page.
pub const HTML: &str = include_str!("dashboard.html");
/// Its script.
pub const SCRIPT: &str = include_str!("dashboard.js");

/// Scripts and data from this origin only; inline styles for the charts' SVG attributes.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// The dashboard's files by path, `None` for any other path.
pub fn asset(path: &str) -> Option<Response<Vec<u8>>> {
    let (body, content_type) = match path {
        "/" | "/dashboard" => (HTML, "text/html; charset=utf-8"),
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(body.as_bytes().to_vec())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script_and_marks_the_rollout_place() {
        let page = asset("/").unwrap();
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert!(page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        assert!(HTML.contains("<script src=\"/dashboard.js\"></script>"));
        assert!(
            !HTML.contains("http://") && !HTML.contains("https://"),
            "nothing from elsewhere"
        );
        // The one URL in the script is SVG's XML namespace, a name, never fetched.
        let script = SCRIPT.replace("'http://www.w3.org/2000/svg'", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
        assert!(!SCRIPT.contains("innerHTML"), "text nodes only");
        assert!(HTML.contains("id=\"rollout\"") && SCRIPT.contains("'/rollout'"));
        assert_eq!(
            asset("/dashboard.js").unwrap().headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert!(asset("/other").is_none());
    }
}
