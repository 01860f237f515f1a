//! The web view's static files (`net/ui/`), embedded in the binary and served
//! at `GET /ui` and `/ui/<file>`: plain HTML, CSS and ES modules with no build
//! step, nothing fetched from elsewhere (no CDN, no external fonts). The pages
//! read the server's own endpoints (`/api/v1/stream`, `/metrics`). This module
//! must never read files at run time or serve anything outside the embedded set.

use bytes::Bytes;

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../../ui/", $path)) }
    };
}

/// Every file of the view; `index.html` answers `/ui` itself.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("lib.js", "text/javascript; charset=utf-8"),
    asset!("farm.js", "text/javascript; charset=utf-8"),
    asset!("session.js", "text/javascript; charset=utf-8"),
    asset!("hand.js", "text/javascript; charset=utf-8"),
    asset!("server.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The file a request path names: `/ui`, `/ui/` and `/ui/index.html` are the
/// page; anything else must be one of [`ASSETS`] by exact name.
pub fn find(path: &str) -> Option<&'static Asset> {
    let name = path.strip_prefix("/ui")?;
    let name = match name.trim_start_matches('/') {
        "" => "index.html",
        rest if name.starts_with('/') => rest,
        _ => return None,
    };
    ASSETS.iter().find(|a| a.path == name)
}

/// `GET /ui…`: the file, or 404 / 405.
pub fn respond<B>(req: &http::Request<B>) -> http::Response<http_body_util::Full<Bytes>> {
    use http::{header, HeaderValue, Method, StatusCode};
    let status = if req.method() != Method::GET && req.method() != Method::HEAD {
        StatusCode::METHOD_NOT_ALLOWED
    } else if let Some(asset) = find(req.uri().path()) {
        return response(asset);
    } else {
        StatusCode::NOT_FOUND
    };
    let body = serde_json::json!({"status": "error", "error": status.canonical_reason()}).to_string();
    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

/// The response for an embedded file.
pub fn response(asset: &Asset) -> http::Response<http_body_util::Full<Bytes>> {
    use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from_static(asset.body)));
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // The files change with the binary; a reload after an upgrade must see them.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_only_embedded_files() {
        assert_eq!(find("/ui").unwrap().path, "index.html");
        assert_eq!(find("/ui/").unwrap().path, "index.html");
        assert_eq!(find("/ui/app.js").unwrap().content_type, "text/javascript; charset=utf-8");
        for missing in ["/uix", "/ui/../Cargo.toml", "/ui/nope.js", "/other"] {
            assert!(find(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in ASSETS {
            // An SVG names its namespace by URL; that is not a fetch.
            let text = String::from_utf8_lossy(asset.body).replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"), "{} names another origin", asset.path);
        }
    }
}
