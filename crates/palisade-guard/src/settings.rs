//! Reading settings that the layers' options share: durations like `8h` or `1m 30s`, and sizes
//! like `10 MiB`.

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

/// A size in bytes: a number, or text like `10 MiB` or `512KB`.
pub fn byte_count<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let bytes = match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => bytes,
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size; write a number of bytes, or like 10 MiB or 512 KB"
                ))
            })?
            .as_u64(),
    };
    T::try_from(bytes).map_err(|_| {
        serde::de::Error::custom(format!("{bytes} bytes is more than this machine can count"))
    })
}
