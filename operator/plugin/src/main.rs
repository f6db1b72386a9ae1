//! `kubectl-swarmseed`: the kubectl plugin for Datasets (`kubectl swarmseed
//! ls | status | wait`).
//!
//! A thin shell: it reads Datasets from the API server with kubectl's
//! connection flags and prints what `swarmseed_plugin` renders.
//! Everything it shows comes from the Dataset's status, so it needs read
//! access to Datasets and nothing else (no agent, no node access).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use swarmseed_crd::Dataset;
use swarmseed_plugin::{self as plugin, ListEntry, Readiness};
use tokio::time::Instant;

/// How often `status --watch` and `wait` look again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-swarmseed",
    bin_name = "kubectl swarmseed",
    version,
    about = "Datasets seeded onto Kubernetes nodes by swarmseed: list them, follow each node's progress, wait for Ready",
    long_about = None,
    after_help = "Install: put kubectl-swarmseed on your PATH; kubectl then runs it as `kubectl swarmseed`.\n\
                  Examples:\n  \
                  kubectl swarmseed ls -A\n  \
                  kubectl swarmseed status llama -n ml --watch\n  \
                  kubectl swarmseed wait llama -n ml --timeout 30m"
)]
struct Cli {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(subcommand)]
    command: Command,
}

/// kubectl's connection flags (same names, same meaning).
#[derive(Args, Debug)]
struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else
    /// ~/.kube/config, else the in-cluster service account).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The kubeconfig cluster to use (default: the context's).
    #[arg(long, global = true, value_name = "NAME")]
    cluster: Option<String>,
    /// The kubeconfig user to use (default: the context's).
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Bound on each request to the API server, e.g. `20s`.
    #[arg(
        long,
        global = true,
        env = "SWARMSEED_REQUEST_TIMEOUT",
        value_name = "DURATION",
        default_value = "20s",
        value_parser = positive_duration
    )]
    request_timeout: Duration,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List Datasets: NAME READY SIZE ORIGIN-RATIO AGE STATUS.
    #[command(visible_alias = "list")]
    Ls {
        /// Datasets of every namespace (adds a NAMESPACE column).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one Dataset: source, revision, conditions, then each node's
    /// progress with the bytes it got from the origin and from peers.
    Status {
        /// The Dataset's name.
        name: String,
        /// Redraw every second until the Dataset is Ready (or Ctrl-C).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Wait until a Dataset is Ready for its current spec, printing progress
    /// on the way. Exit status: 0 Ready, 1 Degraded (or an error), 2 timed
    /// out.
    Wait {
        /// The Dataset's name.
        name: String,
        /// The condition to wait for.
        #[arg(long = "for", value_enum, default_value_t = WaitFor::Ready)]
        wait_for: WaitFor,
        /// Give up after this long, e.g. `90s`, `5m`, `1h`; `0` looks once.
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "5m",
            value_parser = humantime::parse_duration
        )]
        timeout: Duration,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum WaitFor {
    /// Ready=True for the current generation (every selected node holds a
    /// verified copy).
    Ready,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What went wrong, in words a user can act on.
#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error("loading the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("dataset {name:?} not found in namespace {namespace:?}")]
    NotFound { name: String, namespace: String },
    #[error(
        "the Dataset API (datasets.swarmseed.io/v1alpha1) is not installed in this cluster; \
         install swarmseed's CRD (crds/datasets.swarmseed.io.yaml or the Helm chart)"
    )]
    NoCrd,
    #[error("reading dataset {name:?}: {error}")]
    Unreadable { name: String, error: String },
    #[error("{what}: the Kubernetes API at {url} did not answer within {after:?}")]
    Timeout {
        what: String,
        url: String,
        after: Duration,
    },
    #[error("{what}: {message}")]
    Api {
        what: String,
        message: String,
        /// A 404: the object, or the whole Dataset API, is missing.
        not_found: bool,
    },
}

impl PluginError {
    /// Errors that looking again will not fix.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Kubeconfig(_) | Self::NotFound { .. } | Self::NoCrd | Self::Unreadable { .. }
        )
    }
}

/// A kube error in a few words: an API server's answer (whose `Display`
/// carries a Debug dump), or why it could not be reached.
fn describe(e: &kube::Error, url: &str) -> String {
    match e {
        kube::Error::Api(s) if s.message.is_empty() => format!("HTTP {}", s.code),
        kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        other => format!(
            "cannot reach the Kubernetes API at {url}: {}",
            with_causes(other)
        ),
    }
}

/// An error and its causes, each said once.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// Where Datasets are read from.
struct Cluster {
    client: Client,
    url: String,
    namespace: String,
    request_timeout: Duration,
    resource: ApiResource,
}

impl Cluster {
    async fn connect(args: &KubeArgs) -> Result<Self, PluginError> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            cluster: args.cluster.clone(),
            user: args.user.clone(),
        };
        let config_error = |e: &dyn std::fmt::Display| PluginError::Kubeconfig(e.to_string());
        let mut config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| config_error(&e))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| config_error(&e))?
            }
            None if args.context.is_some() || args.cluster.is_some() || args.user.is_some() => {
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| config_error(&e))?
            }
            None => Config::infer().await.map_err(|e| config_error(&e))?,
        };
        config.connect_timeout = Some(args.request_timeout);
        config.read_timeout = Some(args.request_timeout);
        let url = config.cluster_url.to_string();
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            Client::try_from(config).map_err(|e| PluginError::Kubeconfig(with_causes(&e)))?;
        Ok(Self {
            client,
            url,
            namespace,
            request_timeout: args.request_timeout,
            resource: ApiResource::erase::<Dataset>(&()),
        })
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.resource),
            None => Api::all_with(self.client.clone(), &self.resource),
        }
    }

    /// Runs one request, bounded by `limit`.
    async fn call<T>(
        &self,
        what: impl Fn() -> String,
        limit: Duration,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, PluginError> {
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(PluginError::Api {
                what: what(),
                message: describe(&e, &self.url),
                not_found: matches!(&e, kube::Error::Api(s) if s.is_not_found()),
            }),
            Err(_) => Err(PluginError::Timeout {
                what: what(),
                url: self.url.clone(),
                after: limit,
            }),
        }
    }

    /// The Dataset `name` in the chosen namespace.
    async fn get(&self, name: &str, limit: Duration) -> Result<Dataset, PluginError> {
        let what = || format!("reading dataset {name:?} in namespace {:?}", self.namespace);
        let api = self.api(Some(&self.namespace));
        let Some(obj) = self.call(what, limit, api.get_opt(name)).await? else {
            // Either the Dataset or the whole API is missing: a list tells
            // which (it is a 404 only without the CRD).
            let one = ListParams::default().limit(1);
            let probe = api.list_metadata(&one);
            return Err(
                match self.call(|| "listing datasets".into(), limit, probe).await {
                    Ok(_) => PluginError::NotFound {
                        name: name.to_owned(),
                        namespace: self.namespace.clone(),
                    },
                    Err(PluginError::Api {
                        not_found: true, ..
                    }) => PluginError::NoCrd,
                    Err(e) => e,
                },
            );
        };
        obj.try_parse().map_err(|e| PluginError::Unreadable {
            name: name.to_owned(),
            error: e.to_string(),
        })
    }

    /// Datasets of the chosen namespace (or all), sorted.
    async fn list(&self, all_namespaces: bool) -> Result<Vec<ListEntry>, PluginError> {
        let api = self.api((!all_namespaces).then_some(self.namespace.as_str()));
        let list = match self
            .call(
                || "listing datasets".into(),
                self.request_timeout,
                api.list(&ListParams::default()),
            )
            .await
        {
            Err(PluginError::Api {
                not_found: true, ..
            }) => return Err(PluginError::NoCrd),
            other => other?,
        };
        let mut entries: Vec<((String, String), ListEntry)> = list
            .items
            .into_iter()
            .map(|obj| {
                let namespace = obj.metadata.namespace.clone().unwrap_or_default();
                let name = obj.metadata.name.clone().unwrap_or_default();
                let entry = match obj.try_parse::<Dataset>() {
                    Ok(ds) => ListEntry::Dataset(Box::new(ds)),
                    Err(e) => {
                        eprintln!("warning: dataset {namespace}/{name} cannot be read: {e}");
                        ListEntry::Unreadable {
                            namespace: namespace.clone(),
                            name: name.clone(),
                        }
                    }
                };
                ((namespace, name), entry)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries.into_iter().map(|(_, e)| e).collect())
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a
/// panic, and `wait` must still exit with its own status.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube's rustls uses ring; other crates in this binary bring another
    // provider, so one must be chosen before the first TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, PluginError> {
    let cluster = Cluster::connect(&cli.kube).await?;
    match cli.command {
        Command::Ls { all_namespaces } => {
            let entries = cluster.list(all_namespaces).await?;
            if entries.is_empty() {
                if all_namespaces {
                    eprintln!("No datasets found.");
                } else {
                    eprintln!("No datasets found in namespace {:?}.", cluster.namespace);
                }
            } else {
                emit(&plugin::render_list(
                    &entries,
                    all_namespaces,
                    Timestamp::now(),
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { name, watch: false } => {
            let ds = cluster.get(&name, cluster.request_timeout).await?;
            emit(&plugin::render_status(&ds));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { name, watch: true } => watch_status(&cluster, &name).await,
        Command::Wait {
            name,
            wait_for: WaitFor::Ready,
            timeout,
        } => wait_ready(&cluster, &name, timeout).await,
    }
}

/// The failures of a polling loop: a transient one is said once (until
/// another one comes, or a poll succeeds) and the loop keeps looking.
#[derive(Default)]
struct Failures {
    last: String,
}

impl Failures {
    /// A poll succeeded: the next failure is said again.
    fn clear(&mut self) {
        self.last.clear();
    }

    /// `Err` for a final failure, which ends the loop.
    fn keep_polling(&mut self, e: PluginError) -> Result<(), PluginError> {
        if e.is_final() {
            return Err(e);
        }
        let e = e.to_string();
        if e != self.last {
            eprintln!("warning: {e} (retrying)");
            self.last = e;
        }
        Ok(())
    }
}

/// `status --watch`: on a terminal the screen is redrawn in place; into a
/// pipe or file a page is written only when it changed.
async fn watch_status(cluster: &Cluster, name: &str) -> Result<ExitCode, PluginError> {
    let terminal = std::io::stdout().is_terminal();
    let mut last_page = String::new();
    let mut failures = Failures::default();
    loop {
        let started = Instant::now();
        match cluster.get(name, cluster.request_timeout).await {
            Ok(ds) => {
                failures.clear();
                let page = plugin::render_status(&ds);
                if terminal {
                    // Home, clear screen, then the page.
                    emit(&format!(
                        "\x1b[H\x1b[2J{page}\nEvery {}s until Ready; Ctrl-C to stop.\n",
                        POLL_INTERVAL.as_secs()
                    ));
                } else if page != last_page {
                    if !last_page.is_empty() {
                        emit("\n");
                    }
                    emit(&page);
                }
                last_page = page;
                if matches!(plugin::readiness(&ds), Readiness::Ready(_)) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(e) => failures.keep_polling(e)?,
        }
        tokio::time::sleep_until(started + POLL_INTERVAL).await;
    }
}

/// `wait --for ready`: 0 when Ready for the current generation, 1 when
/// Degraded for a reason that needs a change, 2 on timeout; a progress
/// line whenever it changes (a Degraded that may pass is a warning).
async fn wait_ready(
    cluster: &Cluster,
    name: &str,
    timeout: Duration,
) -> Result<ExitCode, PluginError> {
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
    let mut failures = Failures::default();
    loop {
        let started = Instant::now();
        // At least a second for the request, even with `--timeout 0`.
        let limit = cluster.request_timeout.min(
            deadline
                .saturating_duration_since(started)
                .max(POLL_INTERVAL),
        );
        match cluster.get(name, limit).await {
            Ok(ds) => {
                failures.clear();
                match plugin::readiness(&ds) {
                    Readiness::Ready(message) => {
                        emit(&format!("dataset {name:?} is Ready: {message}\n"));
                        return Ok(ExitCode::SUCCESS);
                    }
                    Readiness::Degraded { reason, message }
                        if plugin::degraded_may_pass(&reason) =>
                    {
                        let line = format!("Degraded: {reason}: {message} (waiting)");
                        if line != last_line {
                            eprintln!("warning: dataset {name:?} is {line}");
                            last_line = line;
                        }
                    }
                    Readiness::Degraded { reason, message } => {
                        eprintln!("Error: dataset {name:?} is Degraded: {reason}: {message}");
                        return Ok(ExitCode::from(1));
                    }
                    Readiness::Waiting(line) => {
                        if line != last_line {
                            emit(&format!("{name}: {line}\n"));
                            last_line = line;
                        }
                    }
                }
            }
            Err(e) => failures.keep_polling(e)?,
        }
        if Instant::now() >= deadline {
            eprintln!(
                "Error: timed out after {} waiting for dataset {name:?} to be Ready",
                humantime::format_duration(timeout)
            );
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep_until((started + POLL_INTERVAL).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_go_anywhere_and_wait_has_defaults() {
        let cli = Cli::try_parse_from([
            "kubectl-swarmseed",
            "wait",
            "llama",
            "-n",
            "ml",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
        ])
        .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("ml"));
        assert_eq!(cli.kube.context.as_deref(), Some("prod"));
        assert_eq!(cli.kube.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(cli.kube.request_timeout, Duration::from_secs(20));
        let Command::Wait {
            wait_for, timeout, ..
        } = cli.command
        else {
            panic!("wait parses as wait");
        };
        assert_eq!(
            (wait_for, timeout),
            (WaitFor::Ready, Duration::from_secs(300))
        );
        let cli = Cli::try_parse_from(["kubectl-swarmseed", "-A", "ls"]);
        assert!(cli.is_err(), "-A belongs to ls");
        let cli = Cli::try_parse_from(["kubectl-swarmseed", "ls", "-A"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Ls {
                all_namespaces: true
            }
        ));
        assert!(
            Cli::try_parse_from(["kubectl-swarmseed", "ls", "--request-timeout", "0"]).is_err()
        );
    }
}
