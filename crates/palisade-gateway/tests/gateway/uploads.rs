//! Upload checks: files on an upload route are judged by their bytes, declared type, name and
//! size, scanned by a real clamd, and the upstream gets only what passed, with clean names.

use http::StatusCode;
use palisade_guard::{ClamavOptions, WhenUnavailable};

use crate::{
    clamd::ClamdServer,
    forms::{PNG, form, infected_png, post_form, upload_options},
    support::{TestGateway, Upstream},
};

#[tokio::test]
async fn a_png_passes_with_its_name_cleaned_and_the_form_intact() {
    let upstream = Upstream::start().await;
    let clamd = ClamdServer::start();
    let gateway = TestGateway::start(upload_options(
        &upstream,
        Some(ClamavOptions::socket(&clamd.socket)),
    ))
    .await;
    let body = form(&[
        ("title", None, None, b"holiday"),
        (
            "photo",
            Some("../../../var/www/html/cat.photo.png"),
            Some("image/png"),
            PNG,
        ),
    ]);
    let (response, _) = gateway.send(post_form("/upload", body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let expected = form(&[
        ("title", None, None, b"holiday"),
        ("photo", Some("cat_photo.png"), Some("image/png"), PNG),
    ]);
    assert_eq!(received[0].body, expected);
    assert_eq!(
        received[0].headers["content-length"],
        expected.len().to_string().as_str()
    );
}

#[tokio::test]
async fn files_whose_bytes_type_or_size_do_not_fit_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::start(upload_options(&upstream, None)).await;
    let php = b"<?php echo shell_exec($_GET['cmd']); ?>";
    let big = [PNG, &vec![0u8; 70 * 1024]].concat();
    let cases: [(Vec<u8>, StatusCode, &str); 5] = [
        // A PHP script renamed .jpg (and declared as an image).
        (
            form(&[("photo", Some("cat.jpg"), Some("image/jpeg"), php)]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "could not be recognised",
        ),
        // A PNG declared as something else.
        (
            form(&[("photo", Some("cat.png"), Some("application/pdf"), PNG)]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "declared type does not match",
        ),
        // A PNG named as another type.
        (
            form(&[("photo", Some("cat.php"), Some("image/png"), PNG)]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "cat.php",
        ),
        (
            form(&[("photo", Some("big.png"), Some("image/png"), &big)]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "65536 bytes",
        ),
        (
            form(&[
                ("a", Some("a.png"), Some("image/png"), PNG),
                ("b", Some("b.png"), Some("image/png"), PNG),
                ("c", Some("c.png"), Some("image/png"), PNG),
            ]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "At most 2 files",
        ),
    ];
    for (body, status, says) in cases {
        let (response, page) = gateway.send(post_form("/upload", body)).await;
        let page = String::from_utf8_lossy(&page);
        assert_eq!(response.status(), status, "{page}");
        assert!(page.contains(says), "{says}: {page}");
    }
    assert!(upstream.received().is_empty());
    // Other routes are not upload routes: the same PHP form passes there untouched.
    let body = form(&[("photo", Some("cat.jpg"), Some("image/jpeg"), php)]);
    let (response, _) = gateway.send(post_form("/other", body.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.received()[0].body, body);
}

#[tokio::test]
async fn a_file_with_malware_is_refused_by_a_real_clamd() {
    let upstream = Upstream::start().await;
    let clamd = ClamdServer::start();
    let gateway = TestGateway::start(upload_options(
        &upstream,
        Some(ClamavOptions::socket(&clamd.socket)),
    ))
    .await;
    let body = form(&[("photo", Some("cat.png"), Some("image/png"), &infected_png())]);
    let (response, page) = gateway.send(post_form("/upload", body)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&page).contains("malware"));
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn clamd_over_tcp_scans_the_same() {
    let upstream = Upstream::start().await;
    let clamd = ClamdServer::start();
    let clamav = ClamavOptions::address(&clamd.address);
    let gateway = TestGateway::start(upload_options(&upstream, Some(clamav))).await;
    let infected = form(&[("photo", Some("cat.png"), Some("image/png"), &infected_png())]);
    let (response, _) = gateway.send(post_form("/upload", infected)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let clean = form(&[("photo", Some("cat.png"), Some("image/png"), PNG)]);
    let (response, _) = gateway.send(post_form("/upload", clean)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn clamd_down_refuses_by_default_and_passes_only_when_told_to() {
    let upstream = Upstream::start().await;
    let mut clamd = ClamdServer::start();
    let clean = form(&[("photo", Some("cat.png"), Some("image/png"), PNG)]);
    let refusing = TestGateway::start(upload_options(
        &upstream,
        Some(ClamavOptions::socket(&clamd.socket)),
    ))
    .await;
    let (response, _) = refusing.send(post_form("/upload", clean.clone())).await;
    assert_eq!(response.status(), StatusCode::OK, "clamd up");
    clamd.crash();
    let (response, page) = refusing.send(post_form("/upload", clean.clone())).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&page).contains("could not be checked for malware"));
    assert_eq!(upstream.received().len(), 1);

    let mut clamav = ClamavOptions::socket(&clamd.socket);
    clamav.when_unavailable = WhenUnavailable::DangerPass;
    let passing = TestGateway::start(upload_options(&upstream, Some(clamav))).await;
    let (response, _) = passing.send(post_form("/upload", clean)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

#[tokio::test]
async fn curl_uploads_like_a_browser() {
    let upstream = Upstream::start().await;
    let clamd = ClamdServer::start();
    let gateway = TestGateway::start(upload_options(
        &upstream,
        Some(ClamavOptions::socket(&clamd.socket)),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cat.png");
    std::fs::write(&png, PNG).unwrap();
    let shell = dir.path().join("shell.png");
    std::fs::write(&shell, b"<?php system($_GET['c']);").unwrap();
    let gateway = &gateway;
    let curl = |file: &std::path::Path, name: &str| {
        let field = format!("photo=@{};filename={name};type=image/png", file.display());
        let url = gateway.url("/upload");
        async move {
            let args = [
                "-F",
                "caption=hi",
                "-F",
                &field,
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                &url,
            ];
            let output = gateway.curl(&args).await;
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    assert_eq!(curl(&png, "../../evil/cat.png").await, "200");
    assert_eq!(curl(&shell, "shell.png").await, "415");
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let body = String::from_utf8_lossy(&received[0].body);
    assert!(body.contains("filename=\"cat.png\""), "{body}");
    assert!(body.contains("Content-Type: image/png"), "{body}");
    assert!(body.contains("name=\"caption\"\r\n\r\nhi\r\n"), "{body}");
}

#[tokio::test]
async fn a_form_that_stalls_gets_408_and_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let mut options = upload_options(&upstream, None);
    options.timeouts.body_read = std::time::Duration::from_millis(300);
    let gateway = TestGateway::start(options).await;
    let body = form(&[("photo", Some("cat.png"), Some("image/png"), PNG)]);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; \
         boundary={}\r\nContent-Length: {}\r\n\r\n",
        crate::forms::BOUNDARY,
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&body[..body.len() / 2]);
    let answer = gateway.raw(&raw).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(upstream.received().is_empty());
}
