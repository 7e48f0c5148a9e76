//! A tracing subscriber that keeps the fields of every `palisade::security` event, for tests
//! that check which rules fired.

use std::{sync::Mutex, time::Duration};

/// One event's fields.
#[derive(Debug, Clone, Default)]
pub struct Event(pub Vec<(String, String)>);

impl Event {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The rule ids of an `attack` event (its `rule`, space-separated).
    pub fn rule_ids(&self) -> Vec<u32> {
        self.get("rule")
            .split(' ')
            .filter_map(|id| id.parse().ok())
            .collect()
    }
}

/// Keeps every security event.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<Event>>);

struct Visit<'a>(&'a mut Vec<(String, String)>);

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
        self.0.lock().unwrap().push(Event(fields));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Recorder {
    /// Takes the events whose route is `route`, waiting up to two seconds for `expected` of
    /// them (events are emitted by the gateway's tasks, maybe after the answer was read).
    pub async fn take_for(&self, route: &str, expected: usize) -> Vec<Event> {
        for _ in 0..100 {
            let count = self.count(route);
            if count >= expected && (expected > 0 || count > 0) {
                break;
            }
            if expected == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if self.count(route) == 0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut events = self.0.lock().unwrap();
        let (taken, kept): (Vec<Event>, Vec<Event>) =
            events.drain(..).partition(|e| e.get("route") == route);
        *events = kept;
        taken
    }

    /// Takes every event so far, after a moment for the gateway's tasks to emit theirs.
    pub async fn take_all(&self) -> Vec<Event> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn count(&self, route: &str) -> usize {
        let events = self.0.lock().unwrap();
        events.iter().filter(|e| e.get("route") == route).count()
    }
}
