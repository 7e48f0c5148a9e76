//! Reading settings that the layers' options share: durations like `8h` or `1m 30s`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `10s`, `500ms`, `2m`, `1h`, or a combination such as `1m 30s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let duration: jiff::SignedDuration = text.trim().parse().ok()?;
    Duration::try_from(duration).ok()
}

/// A serde reader for a duration written as [`parse_duration`] reads it.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration; write it like 10s, 500ms or 2m"
        ))
    })
}
