//! CSRF: tokens put into pages, checked on state-changing requests from form fields and
//! headers, bound to the session, and the Fetch-Metadata and Origin gate.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use palisade_guard::{CsrfMode, CsrfRouteOptions};

use crate::support::{TestGateway, Upstream, get, options};

/// A page load as a browser makes it, with `cookie` if given.
fn page(path: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = get(path);
    req.headers_mut()
        .insert(header::ACCEPT, "text/html".parse().unwrap());
    if let Some(cookie) = cookie {
        req.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
    }
    req
}

fn post(path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(path).header("host", "localhost");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// The `name=value` of the gateway's own cookie in a response.
fn own_cookie(response: &http::Response<()>) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("__Host-palisade-csrf="))
        .expect("the gateway sets its cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The token a page's meta tag carries.
fn token_in(body: &str) -> String {
    let start = body
        .find("<meta name=\"csrf-token\" content=\"")
        .expect(body)
        + 33;
    body[start..][..body[start..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn pages_get_the_token_in_post_forms_a_meta_tag_and_the_script() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let (response, body) = gateway.send(page("/form", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = own_cookie(&response);
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attribute), "{set}");
    }
    let body = String::from_utf8(body.to_vec()).unwrap();
    let token = token_in(&body);
    let field = format!("<input type=\"hidden\" name=\"palisade_csrf\" value=\"{token}\">");
    // Both posting forms, the field first; the searching form none (tokens stay out of URLs).
    assert!(
        body.contains(&format!("action=\"/submit\">{field}<input name=\"email\">")),
        "{body}"
    );
    assert!(
        body.contains(&format!("action=\"/other\">{field}")),
        "{body}"
    );
    assert_eq!(body.matches(&field).count(), 2, "{body}");
    assert!(body.contains("<script nonce=\""), "{body}");
    assert!(body.contains("x-csrf-token"), "{body}");
    assert_eq!(
        response.headers()[header::CACHE_CONTROL],
        "private, no-store"
    );

    // The same browser, back again: its cookie stays and the new page's token differs.
    let (again, body) = gateway.send(page("/form", Some(&cookie))).await;
    assert!(again.headers().get(header::SET_COOKIE).is_none());
    assert_ne!(token_in(std::str::from_utf8(&body).unwrap()), token);
}

#[tokio::test]
async fn a_post_needs_the_token_of_its_own_cookie() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let (response, body) = gateway.send(page("/form", None)).await;
    let cookie = own_cookie(&response);
    let token = token_in(std::str::from_utf8(&body).unwrap());
    let form = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];

    // From the form field: the upstream gets the body unchanged.
    let body = format!("email=a%40example.com&palisade_csrf={token}");
    let (ok, _) = gateway.send(post("/submit", &form, &body)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let received = upstream.received();
    assert_eq!(received.last().unwrap().body, body.as_bytes());

    // From the header, as the page's script sends it with fetch.
    let json = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
        ("x-csrf-token", token.as_str()),
    ];
    let (ok, _) = gateway.send(post("/api", &json, "{}")).await;
    assert_eq!(ok.status(), StatusCode::OK);

    // From a multipart body.
    let multipart = format!(
        "--b\r\ncontent-disposition: form-data; name=\"palisade_csrf\"\r\n\r\n{token}\r\n\
         --b\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhi\r\n--b--\r\n"
    );
    let parts = [
        ("cookie", cookie.as_str()),
        ("content-type", "multipart/form-data; boundary=b"),
    ];
    let (ok, _) = gateway.send(post("/upload", &parts, &multipart)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        upstream.received().last().unwrap().body,
        multipart.as_bytes()
    );

    // No token, a forged one, and one from another browser's cookie: refused, never sent on.
    let (other, other_body) = gateway.send(page("/form", None)).await;
    let other_token = token_in(std::str::from_utf8(&other_body).unwrap());
    assert_ne!(own_cookie(&other), cookie);
    let before = upstream.received().len();
    let bodies = [
        "email=x".to_string(),
        "palisade_csrf=AAAA".to_string(),
        format!("palisade_csrf={other_token}"),
    ];
    for body in &bodies {
        let (refused, page) = gateway.send(post("/submit", &form, body)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{body}");
        let page = String::from_utf8(page.to_vec()).unwrap();
        assert!(page.contains("Reload the page"), "{page}");
    }
    assert_eq!(upstream.received().len(), before);

    // A request without cookies rides no session, so it needs no token.
    let (ok, _) = gateway
        .send(post("/submit", &[("content-type", "text/plain")], "x"))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_from_other_sites_are_refused_by_fetch_metadata_origin_and_referer() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csrf.trusted_origins = vec!["https://admin.example.com".into()];
    let gateway = TestGateway::start(options).await;
    let cases = [
        (("sec-fetch-site", "cross-site"), StatusCode::FORBIDDEN),
        (("origin", "https://evil.example"), StatusCode::FORBIDDEN),
        (("origin", "null"), StatusCode::FORBIDDEN),
        (("origin", "http://localhost"), StatusCode::FORBIDDEN),
        (
            ("referer", "https://evil.example/page"),
            StatusCode::FORBIDDEN,
        ),
        (("origin", "https://localhost"), StatusCode::OK),
        (("origin", "https://admin.example.com"), StatusCode::OK),
        (("referer", "https://localhost/form"), StatusCode::OK),
        (("sec-fetch-site", "same-origin"), StatusCode::OK),
    ];
    for ((name, value), status) in cases {
        let (response, _) = gateway.send(post("/submit", &[(name, value)], "")).await;
        assert_eq!(response.status(), status, "{name}: {value}");
    }
    // A safe method is never refused.
    let mut req = get("/page");
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(gateway.send(req).await.0.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_follow_the_applications_session_and_change_at_login() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csrf.session_cookie = Some("session".into());
    let gateway = TestGateway::start(options).await;
    // Before login: bound to the gateway's own cookie.
    let (response, body) = gateway.send(page("/form", None)).await;
    let own = own_cookie(&response);
    let token = token_in(std::str::from_utf8(&body).unwrap());
    let form = |cookie: &str| {
        [
            ("cookie", cookie.to_string()),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ]
    };
    let send = |path: &'static str, cookie: String, body: String| {
        let headers = form(&cookie);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        post(path, &pairs, &body)
    };
    let (login, _) = gateway
        .send(send(
            "/login",
            own.clone(),
            format!("palisade_csrf={token}"),
        ))
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    // The application started a session: the answer carries a token for it.
    let fresh = login.headers()["x-csrf-token"]
        .to_str()
        .unwrap()
        .to_string();
    let session = login.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let cookies = format!("{own}; {session}");
    // The token from before the login no longer counts; the new one does.
    let (old, _) = gateway
        .send(send(
            "/submit",
            cookies.clone(),
            format!("palisade_csrf={token}"),
        ))
        .await;
    assert_eq!(old.status(), StatusCode::FORBIDDEN);
    let (new, _) = gateway
        .send(send("/submit", cookies, format!("palisade_csrf={fresh}")))
        .await;
    assert_eq!(new.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_paths_replace_the_gateways_own_cookie() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    options.csrf.login_paths = vec!["/login".into()];
    let gateway = TestGateway::start(options).await;
    let (response, body) = gateway.send(page("/form", None)).await;
    let own = own_cookie(&response);
    let token = token_in(std::str::from_utf8(&body).unwrap());
    let headers = [
        ("cookie", own.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    // Another spelling of the login path is the login path.
    let (login, _) = gateway
        .send(post("/login/", &headers, &format!("palisade_csrf={token}")))
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    let rotated = own_cookie(&login);
    assert_ne!(rotated, own);
    let fresh = login.headers()["x-csrf-token"].to_str().unwrap();
    let headers = [("cookie", rotated.as_str()), ("x-csrf-token", fresh)];
    assert_eq!(
        gateway.send(post("/submit", &headers, "")).await.0.status(),
        StatusCode::OK
    );
    let stale = [
        ("cookie", rotated.as_str()),
        ("x-csrf-token", token.as_str()),
    ];
    let (refused, _) = gateway.send(post("/submit", &stale, "")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_refresh_path_gives_a_token_for_the_browsers_cookie() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(options(&upstream)).await;
    let (response, body) = gateway.send(get("/.well-known/palisade/csrf-token")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let cookie = own_cookie(&response);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["refresh_in"], 4 * 3600);
    let token = value["token"].as_str().unwrap();
    let headers = [("cookie", cookie.as_str()), ("x-csrf-token", token)];
    assert_eq!(
        gateway.send(post("/submit", &headers, "")).await.0.status(),
        StatusCode::OK
    );
    // The upstream never sees the path.
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| !r.target.contains("csrf-token"))
    );
    let (refused, _) = gateway
        .send(post("/.well-known/palisade/csrf-token", &[], ""))
        .await;
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn routes_can_be_exempt_json_only_or_log_only() {
    let upstream = Upstream::start().await;
    let mut options = options(&upstream);
    let route = |prefix: &str, csrf| palisade_gateway::RouteOptions {
        csrf,
        ..palisade_gateway::RouteOptions::new(prefix)
    };
    options.routes = vec![
        route(
            "/webhooks",
            CsrfRouteOptions {
                mode: Some(CsrfMode::Off),
                json: false,
            },
        ),
        route(
            "/api",
            CsrfRouteOptions {
                mode: None,
                json: true,
            },
        ),
        route(
            "/beta",
            CsrfRouteOptions {
                mode: Some(CsrfMode::LogOnly),
                json: false,
            },
        ),
    ];
    let gateway = TestGateway::start(options).await;
    let cross = [("sec-fetch-site", "cross-site"), ("cookie", "a=b")];
    assert_eq!(
        gateway
            .send(post("/webhooks/pay", &cross, ""))
            .await
            .0
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        gateway.send(post("/beta/x", &cross, "")).await.0.status(),
        StatusCode::OK
    );
    assert_eq!(
        gateway.send(post("/submit", &cross, "")).await.0.status(),
        StatusCode::FORBIDDEN
    );
    // A JSON API refuses what a plain HTML form can send, token or not.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (response, _) = gateway
            .send(post("/api/items", &[("content-type", content_type)], "{}"))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{content_type}");
    }
    let (response, _) = gateway
        .send(post(
            "/api/items",
            &[("content-type", "application/json")],
            "{}",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}
