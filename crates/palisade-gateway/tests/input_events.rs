//! Security events of the input checks: every refused upload emits exactly one event with its
//! rule (the signature's name for malware), and input passed on after cleaning (a file name, rich
//! text) one `sanitized` event. A test binary of its own, as it installs the process-wide
//! tracing subscriber.

#[path = "gateway/clamd.rs"]
mod clamd;
#[path = "gateway/forms.rs"]
mod forms;
#[path = "gateway/recorder.rs"]
mod recorder;
#[path = "gateway/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;

use clamd::{ClamdServer, SIGNATURE};
use forms::{PNG, form, infected_png, post, post_form, rich_text_options, upload_options};
use http::StatusCode;
use palisade_guard::{ClamavOptions, WhenUnavailable};
use recorder::{Recorder, field};
use support::{TestGateway, Upstream};

/// Sends `request` and checks that it got `status` and emitted exactly one event with these
/// fields.
async fn expect_one(
    gateway: &TestGateway,
    recorder: &Recorder,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
    status: StatusCode,
    (kind, rule, action, route): (&str, &str, &str, &str),
) {
    let (response, _) = gateway.send(request).await;
    assert_eq!(response.status(), status, "{rule}");
    let events = recorder.take(1).await;
    assert_eq!(events.len(), 1, "{rule}: {events:?}");
    let event = &events[0];
    assert_eq!(field(event, "kind"), kind, "{event:?}");
    assert_eq!(field(event, "rule"), rule, "{event:?}");
    assert_eq!(field(event, "action"), action, "{event:?}");
    assert_eq!(field(event, "route"), route, "{event:?}");
    assert_eq!(field(event, "client"), "127.0.0.1", "{event:?}");
}

#[tokio::test]
async fn every_input_refusal_and_cleaning_emits_one_event() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    let upstream = Upstream::start().await;
    let mut clamd = ClamdServer::start();
    let mut options = upload_options(&upstream, Some(ClamavOptions::socket(&clamd.socket)));
    options.routes.extend(rich_text_options(&upstream).routes);
    let gateway = TestGateway::start(options).await;

    let php = b"<?php system($_GET['c']); ?>";
    let big = [PNG, &[0u8; 70 * 1024][..]].concat();
    let png = |name| ("f", Some(name), Some("image/png"), PNG);
    let refused = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let large = StatusCode::PAYLOAD_TOO_LARGE;
    let cases = [
        (
            form(&[("f", Some("a.jpg"), Some("image/jpeg"), php)]),
            refused,
            "upload_refused",
            "upload-type-unknown",
        ),
        (
            form(&[("f", Some("a.png"), Some("image/gif"), PNG)]),
            refused,
            "upload_refused",
            "upload-declared-type-mismatch",
        ),
        (
            form(&[png("a.pdf")]),
            refused,
            "upload_refused",
            "upload-extension-mismatch",
        ),
        (
            form(&[("f", Some("a.png"), Some("image/png"), &big)]),
            large,
            "body_too_large",
            "upload-max-file-bytes",
        ),
        (
            form(&[png("a.png"), png("b.png"), png("c.png")]),
            large,
            "body_too_large",
            "upload-max-files",
        ),
        (
            form(&[("f", Some("a.png"), Some("image/png"), &infected_png())]),
            StatusCode::FORBIDDEN,
            "malware",
            SIGNATURE,
        ),
    ];
    for (body, status, kind, rule) in cases {
        let request = post_form("/upload/avatar", body);
        expect_one(
            &gateway,
            &recorder,
            request,
            status,
            (kind, rule, "reject", "/upload/avatar"),
        )
        .await;
    }

    // A file name with a path passes cleaned, and says so once.
    let request = post_form("/upload", form(&[png("../../../etc/cron.d/x.png")]));
    let fields = ("sanitized", "upload-filename", "sanitize", "/upload");
    expect_one(&gateway, &recorder, request, StatusCode::OK, fields).await;
    // A clean upload, and rich text that only needed re-encoding, make none.
    let (response, _) = gateway
        .send(post_form("/upload", form(&[png("cat.png")])))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let form_type = "application/x-www-form-urlencoded";
    gateway
        .send(post("/comments", form_type, "comment=Tom+%26+Jerry"))
        .await;
    assert_eq!(recorder.take(0).await, Vec::<recorder::Fields>::new());

    let script = "comment=hi%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let request = post("/comments", form_type, script);
    let fields = ("sanitized", "rich-text comment", "sanitize", "/comments");
    expect_one(&gateway, &recorder, request, StatusCode::OK, fields).await;
    let json = r#"{"post": {"body": "<img src=x onerror=alert(1)>"}}"#;
    let request = post("/comments", "application/json", json);
    let fields = ("sanitized", "rich-text /post/body", "sanitize", "/comments");
    expect_one(&gateway, &recorder, request, StatusCode::OK, fields).await;

    // clamd down: refused with one event; with danger-pass, passed with one logged event.
    clamd.crash();
    let request = post_form("/upload", form(&[png("cat.png")]));
    let fields = (
        "scan_unavailable",
        "clamav-unavailable",
        "reject",
        "/upload",
    );
    expect_one(
        &gateway,
        &recorder,
        request,
        StatusCode::SERVICE_UNAVAILABLE,
        fields,
    )
    .await;
    let mut clamav = ClamavOptions::socket(&clamd.socket);
    clamav.when_unavailable = WhenUnavailable::DangerPass;
    let passing = TestGateway::start(upload_options(&upstream, Some(clamav))).await;
    let request = post_form("/upload", form(&[png("cat.png")]));
    let fields = ("scan_unavailable", "clamav-unavailable", "log", "/upload");
    expect_one(&passing, &recorder, request, StatusCode::OK, fields).await;
}
