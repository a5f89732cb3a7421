//! The coordinator: turns the flags into worker plans, runs the workers (in this process, or as
//! child processes when the clients do not fit under one process's open-file limit), prints a
//! progress line every second, samples the gateway process, and builds the report.

use std::cell::RefCell;
use std::net::IpAddr;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::churn::ChurnStats;
use crate::config::{Cli, Plan, FD_RESERVE, MAX_CLIENTS_PER_SOURCE_ADDR};
use crate::gateway_metrics;
use crate::procstat::{self, now_ns};
use crate::report::{CoreReport, CpuReport, GatewayReport, Merged, Report, Settings};
use crate::stats::{ClassStats, ConnectStats};
use crate::storm::{Sample, StormReport, StormStats, SAMPLE_EVERY_MS};
use crate::target::{self, Target};
use crate::worker::{self, Progress, WorkerEvent, WorkerReport};

enum Event {
    Worker(usize, WorkerEvent),
    Failed(usize, String),
}

/// Runs the whole test and builds its report.
pub async fn run(cli: Cli) -> Result<Report> {
    validate(&cli)?;
    let fd_limit = procstat::raise_fd_limit();
    let targets = cli.url.iter().map(|u| Target::parse(u)).collect::<Result<Vec<_>>>()?;
    let target = targets.first().cloned().ok_or_else(|| anyhow!("--url: at least one URL"))?;
    let symbols = match &cli.symbols {
        Some(s) => s.clone(),
        None => target::fetch_symbols(&target).await?,
    };
    if cli.subs == 0 {
        bail!("--subs must be at least 1");
    }

    let per_process = cli.clients_per_process.unwrap_or(fd_limit.saturating_sub(FD_RESERVE)).max(1);
    let workers = cli.clients.div_ceil(per_process).max(1) as usize;
    let source_addrs: Vec<Vec<IpAddr>> = match &cli.source_addrs {
        Some(list) => (0..workers).map(|_| list.clone()).collect(),
        None if workers > 1 && is_loopback_v4(&target) => {
            (0..workers).map(|w| vec![IpAddr::from([127, 0, 0, 2 + w as u8])]).collect()
        }
        None => vec![Vec::new(); workers],
    };
    if workers > 253 {
        bail!("{} clients need {workers} worker processes: too many", cli.clients);
    }
    let per_worker_addrs = source_addrs[0].len().max(1) as u64;
    if cli.clients.div_ceil(workers as u64) > MAX_CLIENTS_PER_SOURCE_ADDR * per_worker_addrs {
        eprintln!(
            "load-tests: warning: over {MAX_CLIENTS_PER_SOURCE_ADDR} clients per source address \
             may run out of ephemeral ports; see --source-addrs"
        );
    }

    let stuck_clients = (cli.clients as f64 * cli.stuck_fraction).round() as u64;
    let slow_clients =
        ((cli.clients as f64 * cli.slow_fraction).round() as u64).min(cli.clients - stuck_clients);
    let started = now_ns();
    let lead_ns: u64 = if workers > 1 { 1_000_000_000 } else { 200_000_000 };
    let epoch_ns = started + lead_ns;
    let base = cli.clients / workers as u64;
    let extra = cli.clients % workers as u64;
    let mut plans = Vec::with_capacity(workers);
    let mut first = 0;
    for (w, addrs) in source_addrs.iter().enumerate() {
        let n = base + u64::from((w as u64) < extra);
        plans.push(Plan {
            transport: cli.transport,
            storm: cli.storm,
            storm_pause_ms: cli.storm_pause_ms,
            targets: targets.clone(),
            token: cli.token.clone(),
            symbols: symbols.clone(),
            subs: cli.subs,
            dist: cli.dist,
            zipf_s: cli.zipf_s,
            throttle_ms: cli.throttle_ms,
            total_clients: cli.clients,
            first_client: first,
            clients: n,
            slow_clients,
            stuck_clients,
            slow_rate: cli.slow_rate,
            seed: cli.seed,
            epoch_ns,
            ramp_rate: cli.ramp_rate,
            warmup_ns: (cli.warmup * 1e9) as u64,
            duration_ns: (cli.duration * 1e9) as u64,
            source_addrs: addrs.clone(),
            connect_timeout_ms: cli.connect_timeout_ms,
            read_buffer: cli.read_buffer,
            rcvbuf: cli.rcvbuf,
            churn: if w == 0 { cli.churn } else { 0 },
            churn_hold_ms: cli.churn_hold_ms,
        });
        first += n;
    }
    let (window_start, window_end) = plans[0].window();
    let ramp_end = plans[0].start_ns(cli.clients);
    let (storm_drop, storm_reconnect) = plans[0].storm_times();
    // A storm's gateway samples, from just before the drop to the window's end.
    let storm_samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
    if let (true, Some(pid)) = (cli.storm, cli.gateway_pid) {
        let samples = storm_samples.clone();
        tokio::task::spawn_local(async move {
            let first = storm_drop.saturating_sub(2 * SAMPLE_EVERY_MS * 1_000_000);
            tokio::time::sleep(Duration::from_nanos(first.saturating_sub(now_ns()))).await;
            let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_EVERY_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while now_ns() < window_end {
                tick.tick().await;
                samples.borrow_mut().push(Sample {
                    at_ns: now_ns(),
                    cpu_seconds: procstat::pid_cpu_seconds(pid),
                    rss_kib: procstat::pid_rss_kib(pid),
                });
            }
        });
    }

    let gateway = cli.gateway_pid.map(|pid| {
        Rc::new(RefCell::new(GatewayReport {
            pid,
            rss_kib_before: procstat::pid_rss_kib(pid),
            ..GatewayReport::default()
        }))
    });
    if let Some(g) = &gateway {
        tokio::task::spawn_local(sample_gateway(g.clone(), window_start, window_end));
    }
    let metrics_task = (!cli.no_gateway_metrics).then(|| {
        let target = target.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_nanos(window_start.saturating_sub(now_ns()))).await;
            let a = gateway_metrics::scrape(&target).await?;
            tokio::time::sleep(Duration::from_nanos(window_end.saturating_sub(now_ns()))).await;
            let b = gateway_metrics::scrape(&target).await?;
            Some(gateway_metrics::window(&a, &b, (window_end - window_start) as f64 / 1e9))
        })
    });
    let cores_task = tokio::task::spawn_local(async move {
        tokio::time::sleep(Duration::from_nanos(window_start.saturating_sub(now_ns()))).await;
        let a = procstat::core_times();
        tokio::time::sleep(Duration::from_nanos(window_end.saturating_sub(now_ns()))).await;
        let b = procstat::core_times();
        a.iter()
            .zip(&b)
            .enumerate()
            .filter(|(_, (a, b))| b.total > a.total)
            .map(|(core, (a, b))| {
                let total = (b.total - a.total) as f64;
                CoreReport {
                    core,
                    busy_percent: (b.busy - a.busy) as f64 / total * 100.0,
                    steal_percent: (b.steal - a.steal) as f64 / total * 100.0,
                }
            })
            .collect::<Vec<_>>()
    });
    let own_cpu_start = Rc::new(RefCell::new(None::<f64>));
    {
        let c = own_cpu_start.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_nanos(window_start.saturating_sub(now_ns()))).await;
            *c.borrow_mut() = Some(procstat::self_cpu_seconds());
        });
    }

    let (tx, mut rx) = unbounded_channel::<Event>();
    let mut children = Vec::new();
    if workers == 1 {
        let plan = plans.pop().expect("one plan");
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let (wtx, mut wrx) = unbounded_channel();
            let fwd = {
                let tx = tx.clone();
                tokio::task::spawn_local(async move {
                    while let Some(ev) = wrx.recv().await {
                        let _ = tx.send(Event::Worker(0, ev));
                    }
                })
            };
            let r = worker::run(plan, wtx).await;
            let _ = fwd.await;
            let _ = tx.send(match r {
                Ok(rep) => Event::Worker(0, WorkerEvent::Done(Box::new(rep))),
                Err(e) => Event::Failed(0, format!("{e:#}")),
            });
        });
    } else {
        for (w, plan) in plans.iter().enumerate() {
            children.push(spawn_worker(w, plan, tx.clone()).await?);
        }
    }
    drop(tx);

    let mut latest: Vec<Progress> = vec![Progress::default(); workers];
    let mut reports: Vec<Option<WorkerReport>> = vec![None; workers];
    let mut printer = ProgressPrinter::new(
        cli.quiet,
        cli.clients,
        epoch_ns,
        ramp_end,
        window_start,
        window_end,
        workers > 1,
    );
    printer.churn = cli.churn > 0;
    while reports.iter().any(Option::is_none) {
        match rx.recv().await {
            Some(Event::Worker(w, WorkerEvent::Progress(p))) => {
                latest[w] = p;
                // Workers tick every second from the same start: worker 0's tick paces the line.
                if w == 0 {
                    if let Some(g) = &gateway {
                        let mut g = g.borrow_mut();
                        if let Some(rss) = procstat::pid_rss_kib(g.pid) {
                            g.rss_kib_max = Some(g.rss_kib_max.unwrap_or(0).max(rss));
                        }
                    }
                    printer.print(&latest, gateway.as_ref().map(|g| g.borrow().pid));
                }
            }
            Some(Event::Worker(w, WorkerEvent::Done(r))) => reports[w] = Some(*r),
            Some(Event::Failed(w, why)) => bail!("worker {w} failed: {why}"),
            None => bail!("workers ended without a report"),
        }
    }
    for mut c in children {
        let _ = c.wait().await;
    }

    let reports: Vec<WorkerReport> = reports.into_iter().flatten().collect();
    let mut merged = Merged {
        classes: vec![ClassStats::new(), ClassStats::new(), ClassStats::new()],
        servers: Default::default(),
        connect: ConnectStats::new(),
        peak_open: 0,
        open_at_window_start: 0,
        open_at_window_end: 0,
    };
    let mut churn = ChurnStats::default();
    let mut storm = StormStats::new();
    let mut tester_cpu = 0.0;
    let mut tester_wait = 0.0;
    for r in &reports {
        for (m, c) in merged.classes.iter_mut().zip(&r.classes) {
            m.merge(c);
        }
        merged.connect.merge(&r.connect);
        churn.merge(&r.churn);
        storm.merge(&r.storm);
        for (name, s) in &r.servers {
            merged.servers.entry(name.clone()).or_default().merge(s);
        }
        // Workers peak at about the same time; the sum is an upper bound of the true peak.
        merged.peak_open += r.peak_open;
        merged.open_at_window_start += r.open_at_window_start;
        merged.open_at_window_end += r.open_at_window_end;
        tester_cpu += r.cpu_seconds_window;
        tester_wait += r.run_queue_wait_seconds_window;
    }
    if workers > 1 {
        let own_start = own_cpu_start.borrow().unwrap_or(0.0);
        tester_cpu += procstat::self_cpu_seconds() - own_start;
    }
    let window_s = (window_end - window_start) as f64 / 1e9;
    let gateway = gateway.map(|g| {
        let mut g = g.borrow().clone();
        if let (Some(before), Some(end)) = (g.rss_kib_before, g.rss_kib_window_end) {
            if merged.open_at_window_end > 0 {
                g.rss_bytes_per_session =
                    Some((end as f64 - before as f64) * 1024.0 / merged.open_at_window_end as f64);
            }
        }
        g.cpu_percent_of_core = g.cpu_seconds.map(|c| c / window_s * 100.0);
        g
    });
    let settings = Settings {
        url: cli.url.join(","),
        clients: cli.clients,
        ramp_rate: cli.ramp_rate,
        subs: cli.subs,
        symbols_available: symbols.len(),
        dist: format!("{:?}", cli.dist).to_lowercase(),
        zipf_s: cli.zipf_s,
        throttle_ms: cli.throttle_ms,
        slow_clients,
        slow_rate: cli.slow_rate,
        stuck_clients,
        warmup_s: cli.warmup,
        duration_s: cli.duration,
        workers,
        source_addrs: source_addrs.iter().flatten().map(|a| a.to_string()).collect(),
        churn: cli.churn,
        churn_hold_ms: cli.churn_hold_ms,
        transport: cli.transport.name().into(),
        storm: cli.storm,
        storm_pause_ms: cli.storm_pause_ms,
    };
    let tester = CpuReport {
        processes: workers + usize::from(workers > 1),
        cpu_seconds: tester_cpu,
        cpu_percent_of_core: tester_cpu / window_s * 100.0,
        run_queue_wait_seconds: tester_wait,
    };
    let gateway_metrics = match metrics_task {
        Some(t) => t.await.ok().flatten(),
        None => None,
    };
    let cores = cores_task.await.unwrap_or_default();
    let mut report = Report::build(
        &cli,
        settings,
        started,
        window_s,
        &merged,
        tester,
        gateway,
        gateway_metrics,
        cores,
    );
    report.churn = (cli.churn > 0).then_some(churn);
    if cli.storm {
        let samples = storm_samples.borrow();
        let mut r =
            StormReport::build(&storm, cli.storm_pause_ms, storm_drop, storm_reconnect, &samples);
        if let Some(m) = &report.gateway_metrics {
            r.gateway_resumed_symbols = m.resumed_symbols;
            r.gateway_snapshotted_symbols = m.snapshotted_symbols;
        }
        report.add_storm(r);
    }
    Ok(report)
}

fn validate(cli: &Cli) -> Result<()> {
    let frac = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(anyhow!("{name} must be between 0 and 1, got {v}"))
        }
    };
    frac("--slow-fraction", cli.slow_fraction)?;
    frac("--stuck-fraction", cli.stuck_fraction)?;
    if cli.slow_fraction + cli.stuck_fraction > 1.0 {
        bail!("--slow-fraction + --stuck-fraction must be at most 1");
    }
    if cli.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !cli.ramp_rate.is_finite() || cli.ramp_rate <= 0.0 {
        bail!("--ramp-rate must be above 0");
    }
    if !cli.slow_rate.is_finite() || cli.slow_rate <= 0.0 {
        bail!("--slow-rate must be above 0");
    }
    if !cli.duration.is_finite()
        || cli.duration <= 0.0
        || !cli.warmup.is_finite()
        || cli.warmup < 0.0
    {
        bail!("--duration must be above 0 and --warmup at least 0");
    }
    if !cli.zipf_s.is_finite() || cli.zipf_s < 0.0 {
        bail!("--zipf-s must be at least 0");
    }
    if cli.throttle_ms > 60_000 {
        bail!("--throttle-ms is at most 60000 (PROTOCOL.md §2)");
    }
    if cli.storm && cli.duration * 1000.0 < cli.storm_pause_ms as f64 + 1000.0 {
        bail!(
            "--storm: the window (--duration {} s) must outlast the pause (--storm-pause-ms {}) \
             by at least a second, to see the clients come back",
            cli.duration,
            cli.storm_pause_ms
        );
    }
    Ok(())
}

fn is_loopback_v4(t: &Target) -> bool {
    t.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() && ip.is_loopback())
        || t.host == "localhost"
}

async fn spawn_worker(
    w: usize,
    plan: &Plan,
    tx: UnboundedSender<Event>,
) -> Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("locate the load-tests executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--worker")
        .env_remove("LOADTEST_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start a worker process")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(&serde_json::to_vec(plan)?).await.context("send the plan to a worker")?;
    drop(stdin);
    let stdout = child.stdout.take().expect("piped stdout");
    tokio::task::spawn_local(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut done = false;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(ev) => {
                        done |= matches!(ev, WorkerEvent::Done(_));
                        let _ = tx.send(Event::Worker(w, ev));
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Failed(w, format!("bad event line: {e}")));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Event::Failed(w, format!("read its pipe: {e}")));
                    return;
                }
            }
        }
        if !done {
            let _ = tx.send(Event::Failed(w, "exited without a report".into()));
        }
    });
    Ok(child)
}

async fn sample_gateway(g: Rc<RefCell<GatewayReport>>, window_start: u64, window_end: u64) {
    let pid = g.borrow().pid;
    tokio::time::sleep(Duration::from_nanos(window_start.saturating_sub(now_ns()))).await;
    let cpu0 = procstat::pid_cpu_seconds(pid);
    let wait0 = procstat::pid_run_queue_wait_seconds(pid);
    g.borrow_mut().rss_kib_window_start = procstat::pid_rss_kib(pid);
    tokio::time::sleep(Duration::from_nanos(window_end.saturating_sub(now_ns()))).await;
    let cpu1 = procstat::pid_cpu_seconds(pid);
    let wait1 = procstat::pid_run_queue_wait_seconds(pid);
    let mut g = g.borrow_mut();
    g.rss_kib_window_end = procstat::pid_rss_kib(pid);
    if let Some(rss) = g.rss_kib_window_end {
        g.rss_kib_max = Some(g.rss_kib_max.unwrap_or(0).max(rss));
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        g.cpu_seconds = Some(b - a);
    }
    if let (Some(a), Some(b)) = (wait0, wait1) {
        g.run_queue_wait_seconds = Some((b - a).max(0.0));
    }
}

/// One stderr line a second: phase, sessions, rates and the last second's tail.
struct ProgressPrinter {
    quiet: bool,
    clients: u64,
    churn: bool,
    epoch_ns: u64,
    ramp_end: u64,
    window_start: u64,
    window_end: u64,
    include_own_cpu: bool,
    last_ns: u64,
    last_quotes: u64,
    last_cpu: f64,
    last_gateway_cpu: Option<f64>,
}

impl ProgressPrinter {
    fn new(
        quiet: bool,
        clients: u64,
        epoch_ns: u64,
        ramp_end: u64,
        window_start: u64,
        window_end: u64,
        include_own_cpu: bool,
    ) -> ProgressPrinter {
        ProgressPrinter {
            quiet,
            clients,
            churn: false,
            epoch_ns,
            ramp_end,
            window_start,
            window_end,
            include_own_cpu,
            last_ns: now_ns(),
            last_quotes: 0,
            last_cpu: 0.0,
            last_gateway_cpu: None,
        }
    }

    fn print(&mut self, latest: &[Progress], gateway_pid: Option<u32>) {
        let now = now_ns();
        let dt = (now - self.last_ns) as f64 / 1e9;
        let sum = |f: fn(&Progress) -> u64| latest.iter().map(f).sum::<u64>();
        let quotes = sum(|p| p.quotes);
        let mut cpu: f64 = latest.iter().map(|p| p.cpu_seconds).sum();
        if self.include_own_cpu {
            cpu += procstat::self_cpu_seconds();
        }
        let p99 = latest.iter().map(|p| p.interval_p99_ns).max().unwrap_or(0);
        let phase = if now < self.epoch_ns {
            "start"
        } else if now < self.ramp_end {
            "ramp"
        } else if now < self.window_start {
            "warmup"
        } else if now < self.window_end {
            "measure"
        } else {
            "closing"
        };
        let churn = if self.churn {
            format!(
                "  churn sessions {} failed {}",
                sum(|p| p.churn_sessions),
                sum(|p| p.churn_failures)
            )
        } else {
            String::new()
        };
        let mut gw = String::new();
        if let Some(pid) = gateway_pid {
            let c = procstat::pid_cpu_seconds(pid);
            if let (Some(c), Some(last)) = (c, self.last_gateway_cpu) {
                gw = format!("  gateway cpu {:.0}%", (c - last) / dt * 100.0);
            }
            if let Some(rss) = procstat::pid_rss_kib(pid) {
                gw.push_str(&format!(" rss {:.1} MiB", rss as f64 / 1024.0));
            }
            self.last_gateway_cpu = c;
        }
        if !self.quiet && dt > 0.0 {
            eprintln!(
                "[{:>6.1}s {:<7}] open {}/{}  fail {}  quotes/s {:.0}  p99 {:.2} ms  viol {}  \
                 closes {}  errors {}  tester cpu {:.0}%{churn}{gw}",
                now.saturating_sub(self.epoch_ns) as f64 / 1e9,
                phase,
                sum(|p| p.open),
                self.clients,
                sum(|p| p.connect_failures),
                quotes.saturating_sub(self.last_quotes) as f64 / dt,
                p99 as f64 / 1e6,
                sum(|p| p.order_violations),
                sum(|p| p.closes),
                sum(|p| p.errors),
                (cpu - self.last_cpu) / dt * 100.0,
            );
        }
        self.last_ns = now;
        self.last_quotes = quotes;
        self.last_cpu = cpu;
    }
}
