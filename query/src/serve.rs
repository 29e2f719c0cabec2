//! `pathflow serve`: load the tables, keep them fresh, and answer SQL over
//! HTTP and the Postgres wire protocol until shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::catalog::LiveTables;
use crate::config::ServeConfig;
use crate::domain::{DEFAULT_MAX_PRACTICES, DomainMetrics};
use crate::engine::Engine;
use crate::metrics::QueryMetrics;

/// Why the server could not start, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {key} = {addr:?}: {source} (is another server on that port?)")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the audit log: {0} (check [audit] path and its directory)")]
    Audit(std::io::Error),
    #[error("{0}")]
    Server(std::io::Error),
}

/// The listeners a server has bound, for callers that need the ports (the
/// demo, tests) before serving.
pub struct Bound {
    pub engine: Arc<Engine>,
    pub http: TcpListener,
    pub postgres: Option<TcpListener>,
    reloader: tokio::task::JoinHandle<()>,
    domain: Option<tokio::task::JoinHandle<()>>,
    extracts: Option<tokio::task::JoinHandle<()>>,
}

impl Bound {
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }
    pub fn postgres_addr(&self) -> Option<std::net::SocketAddr> {
        self.postgres.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Loads the tables once (missing ones are reported, not fatal: the
/// transform may not have written them yet; `/readyz` says which), starts
/// the reloader and binds both listeners.
pub async fn bind(cfg: &ServeConfig, metrics: QueryMetrics) -> Result<Bound, ServeError> {
    let tables = LiveTables::new(&cfg.tables.location, Default::default());
    for problem in tables.reload(&mut Default::default()).await {
        eprintln!("serve: {problem}");
    }
    let missing: Vec<&str> = crate::catalog::known_tables()
        .into_iter()
        .filter(|(n, _)| tables.get(n).is_none())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "serve: not yet under {}: {} (they appear when the transform writes them)",
            cfg.tables.location,
            missing.join(", ")
        );
    }
    let reloader = tables
        .spawn_reloader(Duration::from_millis(cfg.tables.reload_interval_ms), |p| {
            eprintln!("serve: cannot reload {p}; queries keep the last version read")
        });
    let engine = Engine::new(cfg, tables, metrics).map_err(ServeError::Audit)?;
    // Refreshed on each commit the reloader sees; a registry that already
    // holds them (a second bind on one `QueryMetrics`) serves the first's.
    let domain = match DomainMetrics::register(engine.metrics().registry(), DEFAULT_MAX_PRACTICES) {
        Ok(d) => Some(Arc::new(d).spawn(
            Arc::clone(&engine),
            Duration::from_millis(cfg.tables.reload_interval_ms),
        )),
        Err(e) => {
            eprintln!("serve: domain metrics not registered: {e}");
            None
        }
    };
    let extracts = spawn_extracts(cfg, &engine);
    let http = TcpListener::bind(&cfg.http.listen)
        .await
        .map_err(|source| ServeError::Bind {
            key: "http.listen",
            addr: cfg.http.listen.clone(),
            source,
        })?;
    let postgres = if cfg.postgres.listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&cfg.postgres.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    key: "postgres.listen",
                    addr: cfg.postgres.listen.clone(),
                    source,
                })?,
        )
    };
    Ok(Bound {
        engine,
        http,
        postgres,
        reloader,
        domain,
        extracts,
    })
}

/// The extract scheduler, when the config has `[[extracts]]`.
fn spawn_extracts(cfg: &ServeConfig, engine: &Arc<Engine>) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.extracts.is_empty() {
        return None;
    }
    let log: crate::schedule::Log = Arc::new(|line: &str| eprintln!("serve: {line}"));
    match crate::schedule::ExtractMetrics::register(engine.metrics().registry()) {
        Ok(metrics) => {
            let s = crate::schedule::Scheduler::new(
                Arc::clone(engine),
                cfg.extracts.clone(),
                metrics,
                log,
            );
            Some(Arc::new(s).spawn())
        }
        Err(e) => {
            eprintln!("serve: extracts not scheduled: their metrics cannot be registered: {e}");
            None
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Bound {
        engine,
        http,
        postgres,
        reloader,
        domain,
        extracts,
    } = bound;
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let wait = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let pg = postgres.map(|listener| {
        tokio::spawn(crate::pg::serve_pg(
            Arc::clone(&engine),
            listener,
            wait(&stop),
        ))
    });
    let http = tokio::spawn(crate::http::serve_http(
        Arc::clone(&engine),
        http,
        wait(&stop),
    ));
    shutdown.await;
    let _ = stop.send(());
    // Aborted, then waited for: a task inside a Delta log read (which blocks
    // its thread) stops only when the read returns, and the runtime must not
    // be torn down under it (delta-kernel's executor panics if it is).
    for task in [Some(reloader), extracts, domain].into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    if let Some(pg) = pg {
        let _ = pg.await;
    }
    let _ = http.await;
    Ok(())
}
