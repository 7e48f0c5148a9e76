//! Progress bars for rustic_core's long operations, shown only when standard error is a terminal.

use std::{io::IsTerminal, sync::Arc, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustic_core::{NoProgressBars, Progress, ProgressBars, ProgressType, RusticProgress};

/// Bars drawn with indicatif.
#[derive(Debug, Clone, Copy)]
struct TerminalBars;

/// A bar, and the style it switches to once its total is known.
#[derive(Debug)]
struct Bar(ProgressBar, Option<&'static str>);

/// Bytes with a known total.
const BYTES_WITH_TOTAL: &str =
    "{prefix:30} [{elapsed_precise}] {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}";

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        false
    }

    fn set_length(&self, len: u64) {
        if let Some(style) = self.1.and_then(|t| ProgressStyle::with_template(t).ok()) {
            self.0.set_style(style);
        }
        self.0.set_length(len);
    }

    fn set_title(&self, title: &str) {
        self.0.set_prefix(title.to_string());
    }

    fn inc(&self, inc: u64) {
        self.0.inc(inc);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl ProgressBars for TerminalBars {
    fn progress(&self, progress_type: ProgressType, prefix: &str) -> Progress {
        // A byte count gets its bar once its total is known (a dump's never is).
        let template = match progress_type {
            ProgressType::Bytes => {
                "{prefix:30} [{elapsed_precise}] {spinner:30} {bytes:>10} {bytes_per_sec:>12}"
            }
            ProgressType::Counter => "{prefix:30} [{elapsed_precise}] {bar:30} {pos:>10}/{len:10}",
            ProgressType::Spinner => "{prefix:30} [{elapsed_precise}] {spinner}",
        };
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_prefix(prefix.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        let with_total = matches!(progress_type, ProgressType::Bytes).then_some(BYTES_WITH_TOTAL);
        Progress::new(Bar(bar, with_total))
    }
}

/// Progress bars when standard error is a terminal and output is for people; none otherwise.
pub fn bars(quiet: bool, json: bool) -> Arc<dyn ProgressBars> {
    if !quiet && !json && std::io::stderr().is_terminal() {
        Arc::new(TerminalBars)
    } else {
        Arc::new(NoProgressBars)
    }
}
