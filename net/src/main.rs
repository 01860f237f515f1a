//! The `jimbus` command: `serve` runs the server; `tail`, `publish` and `health`
//! are small clients of it. Errors become one line on stderr and an exit code
//! (2 for a usage error, 1 for anything else).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_net::config::ServeArgs;
use jimbus_net::server::Server;
use jimbus_net::telemetry::{self, LogFormat};
use jimbus_proto::bus;
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use std::io::{BufRead, Read, Write};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jimbus: the event bus of the Balatro self-play system.
///
/// BalatroMCP mods post game events over HTTP; jimbus keeps them in a durable,
/// sharded log and serves them to gRPC subscribers.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto", env = "JIMBUS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP for mods, gRPC for subscribers) on the embedded durable log.
    Serve(Box<ServeArgs>),
    /// Subscribe over gRPC and print one JSON line per delivery.
    Tail {
        /// Topic pattern with NATS wildcards, e.g. 'balatro.*.SCORING' or '>'.
        pattern: String,
        /// gRPC endpoint of the server: host:port (as `serve --grpc` takes) or an http:// URL.
        #[arg(long, default_value = "127.0.0.1:50051", env = "JIMBUS_GRPC_URL", value_parser = grpc_url)]
        grpc: String,
        /// Start from the oldest retained event instead of new ones.
        #[arg(long)]
        from_start: bool,
        /// Exit after this many deliveries.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish events over gRPC: each argument, or each line of stdin, is one
    /// event object in the mod's JSON dialect.
    Publish {
        /// Events; when none are given, stdin is read line by line.
        events: Vec<String>,
        /// gRPC endpoint of the server: host:port (as `serve --grpc` takes) or an http:// URL.
        #[arg(long, default_value = "127.0.0.1:50051", env = "JIMBUS_GRPC_URL", value_parser = grpc_url)]
        grpc: String,
        /// Session for events that name none.
        #[arg(long, default_value = "cli")]
        session: String,
    },
    /// Exit 0 when the server answers its health check (for container HEALTHCHECKs).
    Health {
        /// The health URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/health")]
        url: String,
    },
}

fn main() {
    jimbus_net::allocator::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            std::process::exit(2);
        }
    };
    telemetry::init_logs(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Tail { pattern, grpc, from_start, count } => tail(pattern, grpc, from_start, count),
        Command::Publish { events, grpc, session } => publish(events, grpc, session),
        Command::Health { url } => health(&url),
    };
    if let Err(e) = result {
        eprintln!("jimbus: {e:#}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("jimbus: {e}");
            std::process::exit(2);
        }
    };
    raise_soft_limits();
    let metrics = telemetry::init_metrics();
    // Before the server starts (and logs that it is ready), so that a SIGTERM
    // sent the moment it is ready drains it instead of killing it.
    let stop_signals = StopSignals::install()?;
    let server = Server::start(config, metrics)?;
    stop_signals.wait();
    server.stop();
    Ok(())
}

/// Raises two soft limits to their hard ones. RLIMIT_MEMLOCK: glommio
/// registers I/O buffers, which count against it (containers need
/// `--ulimit memlock=-1`). RLIMIT_NOFILE: every connection, log segment and
/// ring is a descriptor, and a login shell's soft limit (1,024 on Debian) is
/// below what the connection caps allow; a process out of descriptors can only
/// answer new connections 503 (`http::accept`).
fn raise_soft_limits() {
    for resource in [libc::RLIMIT_MEMLOCK, libc::RLIMIT_NOFILE] {
        // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(resource, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(resource, &limit);
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let _context = runtime.enter();
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        Ok(Self { runtime, term, int })
    }

    fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.term.recv() => tracing::info!("SIGTERM"),
                _ = self.int.recv() => tracing::info!("SIGINT"),
            }
        });
    }
}

/// Takes `host:port` as `serve --grpc` does, or a URL with its scheme, and gives
/// the URL tonic connects to.
fn grpc_url(endpoint: &str) -> Result<String, String> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() && matches!(uri.scheme_str(), Some("http" | "https")) => Ok(url),
        _ => Err(format!("expected host:port or http://host:port, not {endpoint:?}")),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn tail(pattern: String, grpc: String, from_start: bool, count: Option<u64>) -> anyhow::Result<()> {
    client_runtime()?.block_on(async move {
        let mut client =
            EventBusServiceClient::connect(grpc.clone()).await.with_context(|| format!("cannot connect to {grpc}"))?;
        let start = if from_start { bus::StartPosition::Earliest } else { bus::StartPosition::Latest };
        let request = bus::SubscribeRequest { pattern, start: start as i32, ..Default::default() };
        let mut stream = client.subscribe(request).await?.into_inner();
        let mut seen = 0;
        let stdout = std::io::stdout();
        while count.is_none_or(|n| seen < n) {
            let Some(delivery) = stream.message().await? else { break };
            // The same JSON as the browser's stream (/api/v1/stream).
            let json = jimbus_net::http::sse::response_json(&prost::Message::encode_to_vec(&delivery))?;
            let mut out = stdout.lock();
            out.write_all(&json)?;
            writeln!(out)?;
            out.flush()?;
            seen += 1;
        }
        Ok(())
    })
}

fn publish(events: Vec<String>, grpc: String, session: String) -> anyhow::Result<()> {
    let lines = if events.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect()
    } else {
        events
    };
    let mut decoded = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let body = decode_body(line.as_bytes(), Endpoint::Single).map_err(|e| anyhow::anyhow!("event {i}: {e}"))?;
        let mut event = body.events.into_iter().next().map(|d| *d.event).context("no event")?;
        if event.session_id.is_empty() {
            event.session_id = session.clone();
        }
        decoded.push(event);
    }
    let response = client_runtime()?.block_on(async move {
        let mut client =
            EventBusServiceClient::connect(grpc.clone()).await.with_context(|| format!("cannot connect to {grpc}"))?;
        anyhow::Ok(client.publish(bus::PublishRequest { events: decoded }).await?.into_inner())
    })?;
    let rejected: Vec<_> =
        response.rejected.iter().map(|r| serde_json::json!({"index": r.index, "error": r.error})).collect();
    println!(
        "{}",
        serde_json::json!({"accepted": response.accepted, "duplicates": response.duplicates, "rejected": rejected})
    );
    if !response.rejected.is_empty() {
        bail!("{} events were rejected", response.rejected.len());
    }
    Ok(())
}

fn health(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        bail!("{url} answered {status:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_url;

    #[test]
    fn grpc_endpoints_take_host_port_or_a_url() {
        assert_eq!(grpc_url("127.0.0.1:50051").unwrap(), "http://127.0.0.1:50051");
        assert_eq!(grpc_url("localhost:1").unwrap(), "http://localhost:1");
        assert_eq!(grpc_url("http://[::1]:50051").unwrap(), "http://[::1]:50051");
        assert!(grpc_url("nats://a:1").is_err());
        assert!(grpc_url("").is_err());
    }
}
