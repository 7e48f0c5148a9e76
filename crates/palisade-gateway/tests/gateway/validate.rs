//! Input validation per route, configured as in palisade.toml: JSON Schema, parameters,
//! methods, content types and body sizes, enforced or logged.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use palisade_gateway::GatewayOptions;

use crate::support::{TestGateway, Upstream, get};

/// A gateway in front of `upstream` with the routes of `routes` (TOML, `[[routes]]` tables).
async fn gateway(upstream: &Upstream, routes: &str) -> TestGateway {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n{routes}",
        upstream.url()
    );
    let options: GatewayOptions = toml::from_str(&text).unwrap();
    options.validate().unwrap();
    TestGateway::start(options).await
}

fn post(path: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The explanation in a JSON error page.
fn message(body: &Bytes) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(value["error"]["kind"], "invalid_input", "{value}");
    value["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn json_bodies_are_checked_against_the_routes_schema() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["sku", "quantity"], "additionalProperties": false,
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                           "quantity": {"type": "integer", "minimum": 1, "maximum": 99}}}"#,
    )
    .unwrap();
    let routes = format!(
        "[[routes]]\nprefix = \"/api/users\"\n[routes.validate]\nmethods = [\"POST\"]\n\
         content_types = [\"application/json\"]\n\
         json_schema = {{ type = \"object\", required = [\"email\"], properties.email = {{ type = \"string\", format = \"email\" }} }}\n\
         [[routes]]\nprefix = \"/api/orders\"\nvalidate = {{ json_schema_file = \"{}\" }}\n",
        schema.display()
    );
    let gateway = gateway(&upstream, &routes).await;

    let good = r#"{"email": "ann@example.com"}"#;
    let (ok, _) = gateway
        .send(post("/api/users", "application/json", good))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(upstream.received().last().unwrap().body, good.as_bytes());

    let before = upstream.received().len();
    let (refused, body) = gateway
        .send(post(
            "/api/users",
            "application/json",
            r#"{"email": "<script>"}"#,
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let text = message(&body);
    assert!(text.contains("at /email: format"), "{text}");
    assert!(!text.contains("script"), "{text}");
    let (refused, body) = gateway
        .send(post("/api/users", "text/plain", "hello"))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("application/json only"));
    let mut put = post("/api/users", "application/json", good);
    *put.method_mut() = http::Method::PUT;
    let (refused, body) = gateway.send(put).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("does not take PUT"));

    let (ok, _) = gateway
        .send(post(
            "/api/orders",
            "application/json",
            r#"{"sku": "ABC-1234", "quantity": 2}"#,
        ))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let (refused, body) = gateway
        .send(post(
            "/api/orders",
            "application/json",
            r#"{"sku": "ABC-1234' OR 1=1--", "quantity": 0}"#,
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let text = message(&body);
    assert!(
        text.contains("at /sku: pattern") && text.contains("at /quantity: minimum"),
        "{text}"
    );
    assert_eq!(
        upstream.received().len(),
        before + 1,
        "only the good order went on"
    );
}

#[tokio::test]
async fn query_and_form_parameters_follow_their_rules() {
    let upstream = Upstream::start().await;
    let routes = "[[routes]]\nprefix = \"/signup\"\n[routes.validate]\nunknown_params = \"reject\"\n\
                  params.email = { required = true, max_length = 254, pattern = \"[^@ ]+@[^@ ]+\" }\n\
                  params.age = { type = \"integer\", min = 13, max = 130 }\n\
                  params.plan = { enum = [\"free\", \"pro\"], in = \"query\" }\n\
                  [[routes]]\nprefix = \"/search\"\n[routes.validate]\nmax_params = 3\n\
                  params.q = { max_length = 100 }\n";
    let gateway = gateway(&upstream, routes).await;
    let form = "application/x-www-form-urlencoded";
    let (ok, _) = gateway
        .send(post(
            "/signup?plan=pro",
            form,
            "email=ann%40example.com&age=30&palisade_csrf=x",
        ))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let cases = [
        ("/signup", "age=30", "`email` is required"),
        (
            "/signup",
            "email=ann&age=30",
            "`email` does not have the expected form",
        ),
        ("/signup", "email=a%40b&age=12", "`age` must be at least 13"),
        (
            "/signup",
            "email=a%40b&admin=true",
            "does not take the parameter `admin`",
        ),
        (
            "/signup",
            "email=a%40b&plan=pro",
            "`plan` must be given in the query string",
        ),
        (
            "/signup?plan=gold",
            "email=a%40b",
            "`plan` must be one of free, pro",
        ),
    ];
    for (path, body, expected) in cases {
        let (refused, answer) = gateway.send(post(path, form, body)).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = message(&answer);
        assert!(text.contains(expected), "{body}: {text}");
    }
    // A multipart form's text fields are parameters too.
    let multipart = "--b\r\ncontent-disposition: form-data; name=\"email\"\r\n\r\nann\r\n--b--\r\n";
    let (refused, answer) = gateway
        .send(post(
            "/signup",
            "multipart/form-data; boundary=b",
            multipart,
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(message(&answer).contains("`email` does not have"));

    // No spelling of the path dodges its route's rules.
    for path in [
        "/./search",
        "//search",
        "/x/../search",
        "/%73earch",
        "/search%2F",
        "/search/",
    ] {
        let query = format!("{path}?q={}", "a".repeat(101));
        let (response, _) = gateway.send(get(&query)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    let long = format!("/search?q={}", "a".repeat(101));
    assert_eq!(
        gateway.send(get(&long)).await.0.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        gateway.send(get("/search?q=shoes&x=1")).await.0.status(),
        StatusCode::OK
    );
    let many = gateway.send(get("/search?a=1&b=2&c=3&d=4")).await;
    assert_eq!(many.0.status(), StatusCode::BAD_REQUEST);
    // Other paths are not validated.
    assert_eq!(
        gateway.send(get("/other?anything=1")).await.0.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_route_can_limit_body_size_and_only_log() {
    let upstream = Upstream::start().await;
    let routes = "[[routes]]\nprefix = \"/avatar\"\nvalidate = { max_body_bytes = \"1 KiB\" }\n\
                  [[routes]]\nprefix = \"/beta\"\n[routes.validate]\nmode = \"log-only\"\n\
                  params.id = { type = \"integer\" }\n";
    let gateway = gateway(&upstream, routes).await;
    let big = "x".repeat(2048);
    let (refused, _) = gateway
        .send(post("/avatar", "application/octet-stream", &big))
        .await;
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (ok, _) = gateway
        .send(post("/avatar", "application/octet-stream", &big[..1000]))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    // Log-only: the request goes on as it came.
    let (ok, _) = gateway
        .send(post("/beta", "application/x-www-form-urlencoded", "id=abc"))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        upstream.received().last().unwrap().body,
        "id=abc".as_bytes()
    );
}

#[test]
fn bad_rules_name_their_route_and_setting() {
    let cases = [
        (
            "[[routes]]\nprefix = \"/a\"\nvalidate = { methods = [\"GE T\"] }\n",
            "routes[0].validate.methods",
        ),
        (
            "[[routes]]\nprefix = \"/a\"\n[[routes]]\nprefix = \"/b\"\nvalidate = { params.x = { pattern = \"[\" } }\n",
            "routes[1].validate.params.x.pattern",
        ),
        (
            "[[routes]]\nprefix = \"/a\"\nvalidate = { json_schema_file = \"/nonexistent/schema.json\" }\n",
            "routes[0].validate.json_schema_file",
        ),
    ];
    for (routes, setting) in cases {
        let text = format!("upstreams = [\"http://127.0.0.1:1\"]\n{routes}");
        let options: GatewayOptions = toml::from_str(&text).unwrap();
        let err = options.validate().unwrap_err().to_string();
        assert!(err.starts_with(setting), "{err}");
    }
}
