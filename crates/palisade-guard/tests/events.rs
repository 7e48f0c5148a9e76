//! Security events as a subscriber sees them: one per rejection, with its kind, client, route
//! (never the query), rule and action. A test binary of its own, as it installs the
//! process-wide subscriber (a scoped one can miss events that other tests' threads emit at the
//! same callsite without any).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use palisade_guard::{ClientAddr, Rejection, RejectionKind, reject::SECURITY_TARGET};

#[path = "support/recorder.rs"]
mod recorder;
use recorder::Recorder;

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn each_rejection_and_each_logged_one_is_one_event() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();

    let mut req = Request::get("/admin?token=secret").body(()).unwrap();
    req.extensions_mut()
        .insert(ClientAddr("203.0.113.9".parse().unwrap()));
    let _: Response<Bytes> =
        Rejection::new(RejectionKind::UriTooLong, "max-uri-bytes").respond_to(&req);
    let events = std::mem::take(&mut *recorder.0.lock().unwrap());
    assert_eq!(events.len(), 1);
    let (target, fields) = &events[0];
    assert_eq!(target, SECURITY_TARGET);
    assert_eq!(field(fields, "kind"), Some("uri_too_long"));
    assert_eq!(field(fields, "client"), Some("203.0.113.9"));
    assert_eq!(field(fields, "route"), Some("/admin"));
    assert_eq!(field(fields, "rule"), Some("max-uri-bytes"));
    assert_eq!(field(fields, "action"), Some("reject"));
    assert!(!format!("{fields:?}").contains("secret"));

    // A log-only setting lets the request through: the event says `log`, and no page is made.
    let req = Request::post("/form").body(()).unwrap();
    Rejection::new(RejectionKind::Attack, String::from("942100")).log(&req);
    let events = std::mem::take(&mut *recorder.0.lock().unwrap());
    assert_eq!(events.len(), 1);
    let fields = &events[0].1;
    assert_eq!(field(fields, "action"), Some("log"));
    assert_eq!(field(fields, "rule"), Some("942100"));
    assert_eq!(field(fields, "kind"), Some("attack"));
}
