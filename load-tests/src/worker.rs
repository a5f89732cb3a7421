//! One worker: runs its plan's clients on the current thread (a current-thread runtime and a
//! `LocalSet`), ramps them up on schedule, reports progress every second and its figures at
//! the end. The coordinator runs one in-process, or several as child processes
//! (`load-tests --worker`, plan on stdin, events as JSON lines on stdout).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::churn::{self, ChurnStats};
use crate::client::{self, WorkerShared};
use crate::config::Plan;
use crate::procstat::{now_ns, self_cpu_seconds};
use crate::stats::{Class, ClassStats, ConnectStats, ServerStats};
use crate::storm::StormStats;
use crate::symbols::SymbolPicker;

/// How long sessions stay open after the figures are taken at the window's end.
const END_GRACE: Duration = Duration::from_millis(500);

/// Cumulative counters of one worker, sent every second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub open: u64,
    pub connect_failures: u64,
    pub quotes: u64,
    pub order_violations: u64,
    pub closes: u64,
    pub errors: u64,
    /// Churning sessions opened so far, and failed attempts.
    pub churn_sessions: u64,
    pub churn_failures: u64,
    /// The fast clients' p99 quote age since the previous progress, ns (0: none received).
    pub interval_p99_ns: u64,
    pub cpu_seconds: f64,
}

/// A worker's figures at the end of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Fast, slow, stuck.
    pub classes: Vec<ClassStats>,
    /// Per gateway, by the `server` of its `welcome`.
    pub servers: BTreeMap<String, ServerStats>,
    pub connect: ConnectStats,
    pub peak_open: u64,
    pub open_at_window_start: u64,
    pub open_at_window_end: u64,
    /// CPU seconds this process used inside the measured window.
    pub cpu_seconds_window: f64,
    /// Seconds its threads waited for a CPU inside the window (0 where schedstat is missing).
    pub run_queue_wait_seconds_window: f64,
    /// The churning sessions, over the whole run.
    pub churn: ChurnStats,
    /// The reconnect storm (`--storm`; empty without it).
    pub storm: StormStats,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerEvent {
    Progress(Progress),
    Done(Box<WorkerReport>),
}

/// Runs `plan` to the end; progress goes to `events`. Must run inside a `LocalSet`.
pub async fn run(plan: Plan, events: UnboundedSender<WorkerEvent>) -> Result<WorkerReport> {
    let mut targets = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        let addr = target
            .addr()
            .to_socket_addrs()
            .with_context(|| format!("resolve {}", target.addr()))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", target.addr()))?;
        targets.push(client::Endpoint {
            addr,
            host_header: target.host_header(),
            path: target.path.clone(),
            sse_path: target.sse_path(),
        });
    }
    let mut classes: [RefCell<ClassStats>; 3] = Default::default();
    for i in plan.first_client..plan.first_client + plan.clients {
        classes[plan.class_of(i).index()].get_mut().clients += 1;
    }
    let sh = Rc::new(WorkerShared {
        targets,
        servers: RefCell::new(Vec::new()),
        names: plan.symbols.iter().map(|s| s.as_bytes().into()).collect(),
        picker: SymbolPicker::new(plan.symbols.len(), plan.subs, plan.dist, plan.zipf_s, plan.seed),
        classes,
        connect: RefCell::new(ConnectStats::new()),
        open: Cell::new(0),
        peak_open: Cell::new(0),
        window: plan.window(),
        stop: CancellationToken::new(),
        churn: RefCell::new(ChurnStats::default()),
        storm: CancellationToken::new(),
        storm_stats: RefCell::new(StormStats::new()),
        plan,
    });
    let churners: Vec<_> = (0..sh.plan.churn)
        .map(|n| {
            let sh = sh.clone();
            tokio::task::spawn_local(async move { churn::run(&sh, n).await })
        })
        .collect();

    let ramp = tokio::task::spawn_local(ramp(sh.clone()));
    let (window_start, window_end) = sh.window;
    let mut cpu_at_start = None;
    let mut wait_at_start = 0.0;
    let mut open_at_window_start = 0;
    // Ticks at epoch + 1 s, + 2 s, …: every worker's progress describes the same second.
    let first_tick = tokio::time::Instant::now()
        + Duration::from_nanos((sh.plan.epoch_ns + 1_000_000_000).saturating_sub(now_ns()));
    let mut tick = tokio::time::interval_at(first_tick, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = now_ns();
        if cpu_at_start.is_none() && now >= window_start {
            cpu_at_start = Some(self_cpu_seconds());
            wait_at_start = own_run_queue_wait();
            open_at_window_start = sh.open.get();
            if sh.plan.storm {
                sh.storm.cancel();
            }
        }
        if now >= window_end {
            break;
        }
        let next_edge = if cpu_at_start.is_none() { window_start } else { window_end };
        tokio::select! {
            _ = tick.tick() => { let _ = events.send(WorkerEvent::Progress(progress(&sh))); }
            _ = tokio::time::sleep(Duration::from_nanos(next_edge.saturating_sub(now))) => {}
        }
    }
    let cpu_seconds_window = self_cpu_seconds() - cpu_at_start.unwrap_or_else(self_cpu_seconds);
    let run_queue_wait_seconds_window = (own_run_queue_wait() - wait_at_start).max(0.0);
    let open_at_window_end = sh.open.get();
    // Figures are taken now; closing the sessions is not measured.
    let classes: Vec<ClassStats> = sh.classes.iter().map(|c| c.borrow().clone()).collect();
    let servers: BTreeMap<String, ServerStats> = sh.servers.borrow().iter().cloned().collect();
    let connect = sh.connect.borrow().clone();
    // Sessions stay open a moment longer, so that what samples the gateway at the window's end
    // (its /metrics, its RSS) still sees them.
    tokio::time::sleep(END_GRACE).await;
    sh.stop.cancel();
    let clients = ramp.await.map_err(|e| anyhow!("ramp task failed: {e}"))?;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for c in clients.into_iter().chain(churners) {
            let _ = c.await;
        }
    })
    .await;
    // Stuck clients look for the server's close only now, when they drain what piled up.
    let mut classes = classes;
    classes[Class::Stuck.index()].closes_by_code =
        sh.classes[Class::Stuck.index()].borrow().closes_by_code.clone();
    let churn = sh.churn.borrow().clone();
    let storm = sh.storm_stats.borrow().clone();
    Ok(WorkerReport {
        classes,
        servers,
        connect,
        peak_open: sh.peak_open.get(),
        open_at_window_start,
        open_at_window_end,
        cpu_seconds_window,
        run_queue_wait_seconds_window,
        churn,
        storm,
    })
}

fn own_run_queue_wait() -> f64 {
    crate::procstat::pid_run_queue_wait_seconds(std::process::id()).unwrap_or(0.0)
}

/// Starts each client at its time on the plan's ramp; returns their handles.
async fn ramp(sh: Rc<WorkerShared>) -> Vec<tokio::task::JoinHandle<()>> {
    let plan = &sh.plan;
    let mut handles = Vec::with_capacity(plan.clients as usize);
    let end = plan.first_client + plan.clients;
    let mut next = plan.first_client;
    while next < end {
        let now = now_ns();
        while next < end && plan.start_ns(next) <= now {
            let sh2 = sh.clone();
            let index = next;
            handles.push(tokio::task::spawn_local(async move {
                client::run(&sh2, index).await;
            }));
            next += 1;
        }
        if next < end {
            let wait = plan.start_ns(next).saturating_sub(now_ns());
            tokio::select! {
                _ = sh.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_nanos(wait)) => {}
            }
        }
    }
    handles
}

fn progress(sh: &WorkerShared) -> Progress {
    let mut p = Progress {
        open: sh.open.get(),
        connect_failures: sh.connect.borrow().failures(),
        churn_sessions: sh.churn.borrow().sessions,
        churn_failures: sh.churn.borrow().failures_by_reason.values().sum(),
        cpu_seconds: self_cpu_seconds(),
        ..Progress::default()
    };
    for class in Class::ALL {
        let mut c = sh.classes[class.index()].borrow_mut();
        p.quotes += c.quotes_all;
        p.order_violations += c.order_violations;
        p.closes += c.closes();
        p.errors += c.errors();
        if class == Class::Fast && !c.interval_age_ns.is_empty() {
            p.interval_p99_ns = c.interval_age_ns.value_at_quantile(0.99);
        }
        c.interval_age_ns.reset();
    }
    p
}

/// `load-tests --worker`: the plan as JSON on stdin; events as JSON lines on stdout.
pub fn process_main() -> Result<()> {
    // A worker never outlives its coordinator.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    crate::procstat::raise_fd_limit();
    let plan: Plan = serde_json::from_reader(std::io::stdin().lock()).context("read the plan")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = tokio::task::spawn_local(async move {
            while let Some(ev) = rx.recv().await {
                emit(&ev);
            }
        });
        let report = run(plan, tx).await?;
        let _ = writer.await;
        emit(&WorkerEvent::Done(Box::new(report)));
        Ok(())
    })
}

fn emit(ev: &WorkerEvent) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
