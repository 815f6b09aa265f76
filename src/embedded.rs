//! The embedded mode's consumers (projector and ledger) on a thread of their own, with a
//! single-threaded runtime and database connections of their own, at a lower CPU priority
//! than the gateway.
//!
//! On the gateway's runtime a consumer's batch (decoding events, building rows) ran between
//! two awaits on a worker thread, so requests that landed on that worker waited behind it.
//! Here the gateway's workers never run consumer code, and the kernel's scheduler, which
//! preempts, lets a woken handler thread run before the consumers (`[consumers] nice`). The
//! connections' SQLite worker threads are started from this thread and inherit its priority.
//! Views and balances trail the log by what the consumers have yet to apply; holds do not
//! depend on it (the credit book counts pending requests itself).

use anyhow::Context;
use lumina_eventlog::{Consumer, ConsumerOptions, ConsumerWatch, Database, LocalLogSource};
use lumina_ledger::LedgerProjection;
use lumina_projector::ReadModelProjection;
use tokio_util::sync::CancellationToken;

/// The running consumers' thread.
pub struct EmbeddedConsumers {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// The projector's and the ledger's progress, in that order.
    pub watches: Vec<ConsumerWatch>,
}

/// What the consumers' thread needs to start.
pub struct Sources {
    /// The database URL; the thread opens its own connections to it.
    pub database_url: String,
    /// The projector's view of the local log.
    pub projector: LocalLogSource,
    /// The ledger's view of the local log.
    pub ledger: LocalLogSource,
}

impl EmbeddedConsumers {
    /// Starts the thread and returns once both consumers exist (their database connected);
    /// they run until `cancel` fires.
    pub async fn start(
        sources: Sources,
        options: ConsumerOptions,
        nice: i32,
        cancel: CancellationToken,
    ) -> anyhow::Result<EmbeddedConsumers> {
        let (started, watches) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("lumina-consumers".into())
            .spawn(move || {
                lower_priority(nice);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("lumina-consumers")
                    .build()
                    .context("cannot start the consumers' runtime")?;
                runtime.block_on(async move {
                    // One connection each: a consumer holds one for a batch at a time.
                    let db = Database::connect_at_most(&sources.database_url, Some(2))
                        .await
                        .context("the consumers cannot connect to the database")?;
                    let projector = Consumer::new(
                        db.clone(),
                        sources.projector,
                        ReadModelProjection,
                        options.clone(),
                    );
                    let ledger = Consumer::new(db, sources.ledger, LedgerProjection, options);
                    let _ = started.send(vec![projector.watch(), ledger.watch()]);
                    let (projected, journaled) =
                        tokio::join!(projector.run(cancel.clone()), ledger.run(cancel));
                    projected.context("the projector stopped")?;
                    journaled.context("the ledger stopped")?;
                    Ok(())
                })
            })
            .context("cannot start the consumers' thread")?;
        match watches.await {
            Ok(watches) => Ok(EmbeddedConsumers { thread, watches }),
            Err(_) => Err(join(thread)
                .await
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the consumers' thread ended at start"))),
        }
    }

    /// Waits for the thread to end (after the cancellation given to [`Self::start`]).
    pub async fn stop(self) -> anyhow::Result<()> {
        join(self.thread).await
    }
}

async fn join(thread: std::thread::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the consumers' thread panicked"))?
}

/// Sets the calling thread's nice value to `nice` (Linux: per thread, inherited by the threads
/// it starts); a failure (below the process's own without the privilege) leaves it, warned.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(nice, error = %e, "cannot lower the consumers' priority");
    }
}
