//! Rich text: the configured form fields and JSON pointers reach the upstream sanitised, and
//! every other byte of the body as the client sent it.

use crate::{
    forms::{post, rich_text_options},
    support::{TestGateway, Upstream},
};
use http::StatusCode;

#[tokio::test]
async fn a_form_field_loses_its_scripts_and_the_other_fields_stay_as_sent() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(rich_text_options(&upstream)).await;
    let body = "title=%3Cscript%3Ekeep%3C%2Fscript%3E&comment=%3Cp%3EHello%3C%2Fp%3E%3Cscript%3E\
                alert(1)%3C%2Fscript%3E%3Cimg+src%3Dx+onerror%3Dalert(2)%3E&tags=a%2Cb";
    let form = "application/x-www-form-urlencoded";
    let (response, _) = gateway.send(post("/comments/new", form, body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = &upstream.received()[0];
    let sent = String::from_utf8(received.body.to_vec()).unwrap();
    assert_eq!(
        sent,
        "title=%3Cscript%3Ekeep%3C%2Fscript%3E&comment=%3Cp%3EHello%3C%2Fp%3E&tags=a%2Cb"
    );
    assert_eq!(
        received.headers["content-length"],
        sent.len().to_string().as_str()
    );
    // Another route is not cleaned.
    gateway.send(post("/profile", form, body)).await;
    assert_eq!(upstream.received()[1].body, body.as_bytes());
}

#[tokio::test]
async fn a_json_pointer_is_cleaned_in_place() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(rich_text_options(&upstream)).await;
    let body = r#"{"title": "<script>t</script>",
  "post": {"body": "<b>Hi</b><img src=x onerror=alert(1)><script>alert(2)</script>", "n": 1}}"#;
    let (response, _) = gateway
        .send(post("/comments", "application/json", body))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = String::from_utf8(upstream.received()[0].body.to_vec()).unwrap();
    assert_eq!(
        sent,
        r#"{"title": "<script>t</script>",
  "post": {"body": "<b>Hi</b>", "n": 1}}"#
    );
    // A body that is no JSON cannot be cleaned, so it does not pass.
    let (response, _) = gateway
        .send(post(
            "/comments",
            "application/json",
            "{\"post\": {\"body\": 1},}",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn curl_form_parts_are_cleaned_too() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(rich_text_options(&upstream)).await;
    let url = gateway.url("/comments");
    let output = gateway
        .curl(&[
            // --form-string: with -F, a value starting with < names a file to read.
            "--form-string",
            "comment=<em>nice</em><svg onload=alert(1)>",
            "--form-string",
            "name=<script>as-is</script>",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &url,
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    let sent = String::from_utf8(upstream.received()[0].body.to_vec()).unwrap();
    assert!(
        sent.contains("name=\"comment\"\r\n\r\n<em>nice</em>\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains("name=\"name\"\r\n\r\n<script>as-is</script>\r\n"),
        "{sent}"
    );
}
