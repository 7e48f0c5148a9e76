//! Prometheus metrics, read from the state store at every scrape, and the small HTTP endpoint
//! that serves them (loopback by default).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::{Error, Result, RunKind, RunOutcome, Store};

/// The metrics of `jobs` (and of any other job the store has runs of), in Prometheus' text
/// format.
pub fn render(store: &Store, jobs: &[String]) -> Result<String> {
    let registry = Registry::new();
    let labelled = |name: &str, help: &str, labels: &[&str]| {
        let gauge = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(gauge.clone()))
            .expect("unique metric");
        gauge
    };
    let gauge = |name: &str, help: &str| labelled(name, help, &["job"]);
    let counter = |name: &str, help: &str| {
        let counter = IntCounterVec::new(Opts::new(name, help), &["job"]).expect("valid metric");
        registry
            .register(Box::new(counter.clone()))
            .expect("unique metric");
        counter
    };
    let last_success = gauge(
        "palisade_job_last_success_timestamp_seconds",
        "When the job's last successful backup finished (Unix time).",
    );
    let last_duration = gauge(
        "palisade_job_last_duration_seconds",
        "How long the job's last finished run took.",
    );
    let last_added = gauge(
        "palisade_job_last_bytes_added",
        "Bytes the job's last successful backup added to the repository.",
    );
    let added = counter(
        "palisade_job_bytes_added_total",
        "Bytes the job's recorded backups added to the repository.",
    );
    let failures = counter(
        "palisade_job_failures_total",
        "Runs of the job that saved no snapshot (failed, timed out or abandoned).",
    );
    let snapshots = counter(
        "palisade_job_snapshots_total",
        "Snapshots the job's recorded runs saved.",
    );
    let running = gauge(
        "palisade_job_running",
        "1 while a run of the job is going on.",
    );

    let mut names: Vec<String> = jobs.to_vec();
    for job in store.jobs()? {
        if !names.contains(&job) {
            names.push(job);
        }
    }
    for job in &names {
        let labels = [job.as_str()];
        let runs = store.runs_of(RunKind::Backup, job, usize::MAX >> 1)?;
        for metric in [&failures, &snapshots, &added] {
            metric.with_label_values(&labels).inc_by(0);
        }
        running.with_label_values(&labels).set(0.0);
        for run in &runs {
            match run.outcome {
                RunOutcome::Running => running.with_label_values(&labels).set(1.0),
                outcome if outcome.saved_snapshot() => {
                    snapshots.with_label_values(&labels).inc();
                    added
                        .with_label_values(&labels)
                        .inc_by(run.bytes_added.unwrap_or(0));
                }
                RunOutcome::Skipped => {}
                _ => failures.with_label_values(&labels).inc(),
            }
        }
        if let Some(run) = runs.iter().find(|run| run.finished_at.is_some()) {
            let took = run.finished_at.unwrap_or(run.started_at) - run.started_at;
            last_duration
                .with_label_values(&labels)
                .set(took.num_milliseconds() as f64 / 1000.0);
        }
        if let Some(run) = runs.iter().find(|run| run.outcome.saved_snapshot()) {
            let at = run.finished_at.unwrap_or(run.started_at);
            last_success
                .with_label_values(&labels)
                .set(at.timestamp_millis() as f64 / 1000.0);
            last_added
                .with_label_values(&labels)
                .set(run.bytes_added.unwrap_or(0) as f64);
        }
    }

    // Maintenance tasks (prune, verify, restore-test), labelled by task and job ("" for a
    // task over every job).
    let task_gauge = |name: &str, help: &str| labelled(name, help, &["task", "job"]);
    let task_success = task_gauge(
        "palisade_task_last_success_timestamp_seconds",
        "When the task's last successful run finished (Unix time).",
    );
    let task_failed = task_gauge(
        "palisade_task_last_failed",
        "1 when the task's last finished run failed, else 0.",
    );
    let task_duration = task_gauge(
        "palisade_task_last_duration_seconds",
        "How long the task's last finished run took.",
    );
    for (kind, job) in store.tasks()? {
        let labels = [kind.as_str(), job.as_str()];
        let runs = store.runs_of(kind, &job, usize::MAX >> 1)?;
        if let Some(run) = runs.iter().find(|run| run.finished_at.is_some()) {
            let took = run.finished_at.unwrap_or(run.started_at) - run.started_at;
            task_duration
                .with_label_values(&labels)
                .set(took.num_milliseconds() as f64 / 1000.0);
            let failed = run.outcome != RunOutcome::Success;
            task_failed
                .with_label_values(&labels)
                .set(if failed { 1.0 } else { 0.0 });
        }
        if let Some(run) = runs.iter().find(|run| run.outcome == RunOutcome::Success) {
            let at = run.finished_at.unwrap_or(run.started_at);
            task_success
                .with_label_values(&labels)
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    Ok(String::from_utf8(out).expect("the text format is UTF-8"))
}

/// A running metrics endpoint: `GET /metrics` answers the text format; anything else 404.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    address: std::net::SocketAddr,
    jobs: Arc<Mutex<Vec<String>>>,
}

impl MetricsServer {
    /// Listens on `address` and serves the store at `state` from a thread of its own.
    pub fn start(address: &str, state: PathBuf, jobs: Vec<String>) -> Result<Self> {
        let server = tiny_http::Server::http(address).map_err(|err| Error::Metrics {
            address: address.to_string(),
            reason: err.to_string(),
        })?;
        let bound = server.server_addr().to_ip().ok_or_else(|| Error::Metrics {
            address: address.to_string(),
            reason: "not an IP address".into(),
        })?;
        let server = Arc::new(server);
        let jobs = Arc::new(Mutex::new(jobs));
        let (serving, names) = (server.clone(), jobs.clone());
        std::thread::Builder::new()
            .name("palisade-metrics".into())
            .spawn(move || serve(&serving, &state, &names))
            .expect("start the metrics thread");
        Ok(Self {
            server,
            address: bound,
            jobs,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Replaces the configured jobs (after a config reload).
    pub fn set_jobs(&self, jobs: Vec<String>) {
        *self.jobs.lock().expect("jobs lock") = jobs;
    }
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn serve(server: &tiny_http::Server, state: &std::path::Path, jobs: &Mutex<Vec<String>>) {
    for request in server.incoming_requests() {
        let response = if request.url() != "/metrics" {
            tiny_http::Response::from_string("not found; metrics are at /metrics\n")
                .with_status_code(404)
        } else {
            let jobs = jobs.lock().expect("jobs lock").clone();
            match Store::open(state).and_then(|store| render(&store, &jobs)) {
                Ok(text) => tiny_http::Response::from_string(text).with_header(
                    "Content-Type: text/plain; version=0.0.4"
                        .parse::<tiny_http::Header>()
                        .expect("a valid header"),
                ),
                Err(err) => {
                    log::warn!("metrics: {err}");
                    tiny_http::Response::from_string("the state store cannot be read\n")
                        .with_status_code(500)
                }
            }
        };
        let _ = request.respond(response);
    }
}
