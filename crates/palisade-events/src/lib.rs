//! Palisade's events: the state store of every run and open alert, the alert rules and the
//! channels that deliver them, and the Prometheus metrics read from the store.
//!
//! The binary parses the config and hands this crate typed options; nothing here reads the
//! environment or the config file. Time comes from a [`Clock`], so that schedules, repeats and
//! the missed-backup alarm can be tested without waiting. See `docs/alerts.md`.

pub mod alert;
pub mod channel;
pub mod clock;
mod error;
pub mod metrics;
pub mod store;

pub use crate::{
    alert::{Alerts, Notice, NoticeKind, Problem, Rule},
    channel::{Channel, ChannelKind, Dispatcher, EmailOptions, RunPhase, Secret, SmtpTls},
    clock::{Clock, FileClock, ManualClock, SystemClock},
    error::{Error, Result},
    store::{RunKind, RunOutcome, RunRecord, RunResult, Store, Trigger},
};
