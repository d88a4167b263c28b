//! The web app's static files, embedded in the binary (no build step: plain
//! HTML, CSS and JavaScript). They hold no data, so they are the only routes
//! served without the token; the Host and Origin checks still apply, and the
//! page's scripts send the token on every `/api/*` request.

use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every answer: only this origin's own files,
/// no inline scripts or styles, no framing.
pub(super) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// A static file: its path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("web/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("web/app.css"),
    },
    Asset {
        path: "/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("web/icon.svg"),
    },
];

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// Whether a request is for a static file (served without the token).
pub(super) fn is_asset(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && find(path).is_some()
}

/// The paths of the static files, for the router.
pub(super) fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path)
}

/// Serves the static file at `path`.
pub(super) async fn serve_asset(uri: axum::http::Uri) -> Response {
    match find(uri.path()) {
        Some(a) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.body,
        )
            .into_response(),
        None => super::routes::not_found().await.into_response(),
    }
}
