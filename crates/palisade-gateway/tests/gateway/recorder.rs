//! A tracing subscriber that keeps the fields of every `palisade::security` event, for the
//! test binaries that install it process-wide.

use std::{sync::Mutex, time::Duration};

pub type Fields = Vec<(String, String)>;

/// Keeps the fields of every security event.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<Fields>>);

struct Visit<'a>(&'a mut Fields);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().into(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().into(), value.into()));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == palisade_guard::reject::SECURITY_TARGET
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Visit(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Recorder {
    /// The events recorded since the last call, after waiting briefly for `expected` of them
    /// (or a fifth of a second when none is expected, so that a stray one shows).
    pub async fn take(&self, expected: usize) -> Vec<Fields> {
        if expected == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..100 {
            if self.0.lock().unwrap().len() >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The value of one field of an event, empty when it has none.
pub fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}
