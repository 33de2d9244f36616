//! The coordinator's state machine: membership, the barrier sequence of a checkpoint,
//! interval scheduling and idle exit. It does no I/O of its own: every effect goes through
//! [`Env`], and time comes in as an argument, so the whole protocol logic is unit-tested
//! with a fake environment (see the tests at the bottom).
//!
//! Checkpoint of generation N (one at a time):
//! 1. `begin` the generation directory; the processes connected now are the participants.
//! 2. For each phase Suspend, Drain, Snapshot, Refill, Resume: send `Barrier{N, phase, dir}`
//!    to every participant, wait until all of them answered `BarrierReached{N, phase}`
//!    (per-phase timeout).
//! 3. Wait (write timeout) until every participant sent `Written{N, ..}`; then commit the
//!    manifest, prune to keep K and answer the requesters; with `kill`, terminate the job.
//!
//! Any `Failed`, a disconnect of a participant before its image is written, a protocol
//! violation, a timeout, or a new process joining before the snapshot is complete aborts
//! the checkpoint: `Abort` goes to every participant still connected, the generation
//! directory is abandoned, requesters get `CheckpointFailed`, and the job runs on.

use crate::events::Event;
use ckpt_protocol::{
    CheckpointSummary, ImageWritten, Message, Phase, ProcessInfo, ProcessStatus, Status,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// State after a termination signal: exit once no checkpoint runs and either one was
/// requested since, or `until` passed.
#[derive(Debug)]
struct Term {
    reason: String,
    until: Instant,
    requested: bool,
}

/// Identifies one process connection.
pub type ConnId = u64;
/// Identifies one pending control request.
/// Rendezvous entries kept at most (a restart of a very large job publishes one per
/// connection between separately restored processes).
const MAX_RENDEZVOUS: usize = 1 << 20;

pub type CtlId = u64;

/// The phases in the order the coordinator runs them.
pub const PHASES: [Phase; 5] = [
    Phase::Suspend,
    Phase::Drain,
    Phase::Snapshot,
    Phase::Refill,
    Phase::Resume,
];

/// One committed process image, as handed to [`Env::commit_generation`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedImage {
    pub info: ProcessInfo,
    pub written: ImageWritten,
}

/// Everything the machine does to the outside world.
pub trait Env {
    /// Sends `msg` to a process connection. Failures are the connection's business (it will
    /// be reported as left).
    fn send(&mut self, conn: ConnId, msg: Message);
    /// Answers a control request.
    fn reply(&mut self, ctl: CtlId, msg: Message);
    /// Creates the directory of the next generation; returns its number and path.
    fn begin_generation(&mut self) -> anyhow::Result<(u64, PathBuf)>;
    /// Writes and commits the manifest of `generation`.
    fn commit_generation(
        &mut self,
        generation: u64,
        images: &[CommittedImage],
        summary: &CheckpointSummary,
    ) -> anyhow::Result<()>;
    /// Removes an incomplete generation.
    fn abandon_generation(&mut self, generation: u64);
    /// Keeps the newest `keep` complete generations.
    fn prune(&mut self, keep: usize);
    /// Journals an event.
    fn event(&mut self, ev: Event);
}

#[derive(Debug, Clone)]
pub struct Config {
    pub keep: usize,
    pub interval: Option<Duration>,
    pub phase_timeout: Duration,
    pub write_timeout: Duration,
    pub exit_when_idle: Option<Duration>,
    /// Static parts of [`Status`].
    pub coordinator_pid: i32,
    pub ckpt_dir: String,
    pub socket: String,
    /// `unix:PATH`, `tcp:HOST:PORT`: every address the coordinator listens on.
    pub addresses: Vec<String>,
    /// The batch job's id, when known.
    pub job_id: Option<String>,
    /// One checkpoint at this time (Unix seconds): `--checkpoint-at`, e.g. ahead of a
    /// batch system's time limit.
    pub deadline_unix: Option<u64>,
    /// `--term-hold`: after a checkpoint that processes asked for because they got SIGTERM,
    /// keep the job stopped this long before ending it (a batch system that is preempting
    /// the job requeues it meanwhile; the job must not end by itself first).
    pub term_hold: Option<Duration>,
}

impl Config {
    pub fn for_tests() -> Config {
        Config {
            keep: 3,
            interval: None,
            phase_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(600),
            exit_when_idle: None,
            coordinator_pid: 1,
            ckpt_dir: "/ckpt".into(),
            socket: "/ckpt/coordinator.sock".into(),
            addresses: vec!["unix:/ckpt/coordinator.sock".into()],
            job_id: None,
            deadline_unix: None,
            term_hold: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Request,
    Interval,
    Deadline,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Request => "request",
            Trigger::Interval => "interval",
            Trigger::Deadline => "deadline",
        }
    }
}

struct Member {
    info: ProcessInfo,
}

struct Progress {
    info: ProcessInfo,
    /// Index into [`PHASES`] of the last phase this process reported.
    reached: Option<usize>,
    written: Option<ImageWritten>,
}

struct Running {
    generation: u64,
    dir: PathBuf,
    started: Instant,
    /// Index into [`PHASES`] of the phase in progress; `PHASES.len()` = waiting for images.
    stage: usize,
    deadline: Instant,
    participants: BTreeMap<ConnId, Progress>,
    /// Participants that reached the current phase / wrote their image (so that each
    /// message costs O(log N), not a scan of all participants: see docs/scale.md).
    reached_count: usize,
    written_count: usize,
    waiters: Vec<CtlId>,
    kill: bool,
    /// `kill` came from a process that got SIGTERM (not from a command).
    kill_by_term: bool,
}

impl Running {
    fn stage_name(&self) -> String {
        match PHASES.get(self.stage) {
            Some(p) => format!("{p:?}").to_lowercase(),
            None => "write".into(),
        }
    }
}

pub struct Machine {
    cfg: Config,
    members: BTreeMap<ConnId, Member>,
    ckpt: Option<Running>,
    last: Option<CheckpointSummary>,
    next_interval: Option<Instant>,
    /// The pending deadline checkpoint: (when, Unix seconds).
    deadline: Option<(Instant, u64)>,
    /// The job is held stopped after a SIGTERM checkpoint until then (`--term-hold`), with
    /// that checkpoint's summary.
    held: Option<(Instant, CheckpointSummary)>,
    /// Rendezvous of restarting processes: connection key -> new address.
    rendezvous: BTreeMap<String, String>,
    /// Lookups waiting for their key to be published: (control, key, give up at).
    lookups: Vec<(CtlId, String, Instant)>,
    started: Instant,
    ever_joined: bool,
    idle_since: Instant,
    exit: Option<String>,
    /// A termination signal arrived (see `terminate`).
    term: Option<Term>,
}

fn describe(info: &ProcessInfo) -> String {
    format!(
        "process vpid {} ({}, pid {} on {})",
        info.vpid, info.program, info.real_pid, info.host
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Machine {
    pub fn new(cfg: Config, now: Instant) -> Machine {
        let next_interval = cfg.interval.map(|i| now + i);
        let deadline = cfg.deadline_unix.map(|at| {
            let left = at.saturating_sub(unix_now());
            (now + Duration::from_secs(left), at)
        });
        Machine {
            cfg,
            members: BTreeMap::new(),
            ckpt: None,
            last: None,
            next_interval,
            deadline,
            rendezvous: BTreeMap::new(),
            lookups: Vec::new(),
            held: None,
            started: now,
            ever_joined: false,
            idle_since: now,
            exit: None,
            term: None,
        }
    }

    pub fn busy(&self) -> bool {
        self.ckpt.is_some()
    }

    pub fn process_count(&self) -> usize {
        self.members.len()
    }

    /// The generation being checkpointed, if any.
    pub fn current_generation(&self) -> Option<u64> {
        self.ckpt.as_ref().map(|c| c.generation)
    }

    /// Why the coordinator should exit now, if it should.
    pub fn exit_reason(&self) -> Option<&str> {
        self.exit.as_deref()
    }

    /// A process completed the handshake (its protocol version was already checked).
    pub fn process_joined(
        &mut self,
        now: Instant,
        env: &mut dyn Env,
        conn: ConnId,
        info: ProcessInfo,
    ) {
        tracing::info!("{} joined", describe(&info));
        env.send(
            conn,
            Message::Welcome {
                protocol_version: ckpt_protocol::PROTOCOL_VERSION,
                coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        );
        env.event(Event::ProcessJoined {
            vpid: info.vpid,
            real_pid: info.real_pid,
            host: info.host.clone(),
            program: info.program.clone(),
            restored_from: info.restored_from,
        });
        if let Some(other) = self.members.values().find(|m| m.info.vpid == info.vpid) {
            tracing::warn!(
                "{} has the same vpid as {}",
                describe(&info),
                describe(&other.info)
            );
        }
        let desc = describe(&info);
        self.members.insert(conn, Member { info });
        self.ever_joined = true;
        // A process that appears before every image captured its state would be missing
        // from the generation (e.g. a child forked just before the suspend).
        if let Some(c) = &self.ckpt {
            let snapshot_idx = PHASES.iter().position(|p| *p == Phase::Snapshot).unwrap();
            if c.stage <= snapshot_idx {
                let reason = format!(
                    "{desc} joined the job during the {} phase, so the generation would miss it",
                    c.stage_name()
                );
                self.fail(now, env, reason);
            }
        }
    }

    /// A process connection closed (process exit, crash, or a failed write to it).
    pub fn process_left(&mut self, now: Instant, env: &mut dyn Env, conn: ConnId, reason: &str) {
        let Some(member) = self.members.remove(&conn) else {
            return;
        };
        tracing::info!("{} left: {reason}", describe(&member.info));
        env.event(Event::ProcessLeft {
            vpid: member.info.vpid,
            real_pid: member.info.real_pid,
            program: member.info.program.clone(),
            reason: reason.to_string(),
        });
        if self.members.is_empty() {
            self.idle_since = now;
        }
        if let Some(c) = &self.ckpt {
            if let Some(p) = c.participants.get(&conn) {
                if p.written.is_none() {
                    let reason = format!(
                        "{} disconnected during the {} phase ({reason})",
                        describe(&member.info),
                        c.stage_name()
                    );
                    self.fail(now, env, reason);
                }
            }
        }
    }

    /// A message from a process connection.
    pub fn process_message(&mut self, now: Instant, env: &mut dyn Env, conn: ConnId, msg: Message) {
        let Some(member) = self.members.get(&conn) else {
            return;
        };
        let desc = describe(&member.info);
        match msg {
            Message::BarrierReached { generation, phase } => {
                let Some(c) = self.ckpt.as_mut().filter(|c| c.generation == generation) else {
                    tracing::warn!("ignoring a late BarrierReached({phase:?}) for generation {generation} from {desc}");
                    return;
                };
                let Some(progress) = c.participants.get_mut(&conn) else {
                    tracing::warn!("ignoring BarrierReached from {desc}: it is not part of generation {generation}");
                    return;
                };
                let idx = PHASES.iter().position(|p| *p == phase).unwrap();
                if idx != c.stage {
                    let reason = format!(
                        "{desc} reported reaching the {} phase while the coordinator waits for the {} phase",
                        format!("{phase:?}").to_lowercase(),
                        c.stage_name()
                    );
                    self.fail(now, env, reason);
                    return;
                }
                if progress.reached != Some(idx) {
                    progress.reached = Some(idx);
                    c.reached_count += 1;
                }
                self.advance(now, env);
            }
            Message::RequestCheckpoint { kill } => {
                tracing::info!("{desc} asks for a checkpoint{}", if kill { " and the end of the job" } else { "" });
                if self.held.is_some() {
                    tracing::info!("the job is held after its last checkpoint: nothing to do");
                    return;
                }
                if self.ckpt.is_none() {
                    self.start_checkpoint(now, env, Trigger::Request, None, kill);
                }
                if let Some(c) = self.ckpt.as_mut() {
                    c.kill |= kill;
                    c.kill_by_term |= kill;
                }
                if let Some(t) = self.term.as_mut() {
                    t.requested = true;
                }
            }
            Message::Written(w) => {
                let Some(c) = self.ckpt.as_mut().filter(|c| c.generation == w.generation) else {
                    tracing::warn!("ignoring a late Written for generation {} from {desc}", w.generation);
                    return;
                };
                let Some(progress) = c.participants.get_mut(&conn) else {
                    tracing::warn!("ignoring Written from {desc}: it is not part of generation {}", w.generation);
                    return;
                };
                if !valid_file_name(&w.file) {
                    let reason = format!("{desc} reported an invalid image file name {:?}", w.file);
                    self.fail(now, env, reason);
                    return;
                }
                tracing::info!(
                    "{desc} wrote {} ({} bytes, stopped {:.3}s, write {:.3}s)",
                    w.file,
                    w.bytes,
                    w.stopped_seconds,
                    w.write_seconds
                );
                if progress.written.is_none() {
                    c.written_count += 1;
                }
                progress.written = Some(w);
                self.advance(now, env);
            }
            Message::Failed { generation, error } => {
                match &self.ckpt {
                    Some(c) if c.generation == generation => {
                        let reason = format!("{desc} failed in the {} phase: {error}", c.stage_name());
                        self.fail(now, env, reason);
                    }
                    _ => tracing::warn!("{desc} reported a failure for generation {generation}, which is not running: {error}"),
                }
            }
            other => tracing::warn!("ignoring unexpected message from {desc}: {other:?}"),
        }
    }

    /// A control request. Every request gets exactly one reply through [`Env::reply`]
    /// (a checkpoint request: when its checkpoint ends).
    pub fn control(&mut self, now: Instant, env: &mut dyn Env, ctl: CtlId, msg: Message) {
        // A command (a restart probing for its coordinator, a status) is activity: an idle
        // coordinator must not exit under a restart that is about to use it.
        self.idle_since = now;
        match msg {
            Message::Checkpoint { kill } => match &self.held {
                // The job is stopped at its last checkpoint: that is the checkpoint.
                Some((_, summary)) => {
                    tracing::info!(
                        "checkpoint request while the job is held after generation {}: answered with it",
                        summary.generation
                    );
                    env.reply(ctl, Message::CheckpointDone(summary.clone()));
                    if kill {
                        self.held = None;
                        self.terminate_all(env);
                    }
                }
                None => self.start_checkpoint(now, env, Trigger::Request, Some(ctl), kill),
            },
            Message::GetStatus => {
                let st = self.status(now);
                env.reply(ctl, Message::Status(st));
            }
            Message::Shutdown { kill } => {
                if self.ckpt.is_some() {
                    self.fail(now, env, "the coordinator is shutting down".into());
                }
                if kill {
                    self.terminate_all(env);
                }
                env.reply(ctl, Message::Ok);
                self.exit = Some(if kill {
                    "shutdown requested (job terminated)".into()
                } else {
                    "shutdown requested".into()
                });
            }
            Message::RendezvousPublish { key, addr } => {
                tracing::debug!("rendezvous {key} at {addr}");
                let mut i = 0;
                while i < self.lookups.len() {
                    if self.lookups[i].1 == key {
                        let (waiter, _, _) = self.lookups.swap_remove(i);
                        env.reply(
                            waiter,
                            Message::RendezvousFound {
                                key: key.clone(),
                                addr: addr.clone(),
                            },
                        );
                    } else {
                        i += 1;
                    }
                }
                if self.rendezvous.len() >= MAX_RENDEZVOUS {
                    // keys carry their generation: the oldest entries are the stalest
                    if let Some(k) = self.rendezvous.keys().next().cloned() {
                        self.rendezvous.remove(&k);
                    }
                }
                self.rendezvous.insert(key, addr);
                env.reply(ctl, Message::Ok);
            }
            Message::RendezvousLookup { key, timeout_ms } => match self.rendezvous.get(&key) {
                Some(addr) => env.reply(
                    ctl,
                    Message::RendezvousFound {
                        key,
                        addr: addr.clone(),
                    },
                ),
                None => {
                    let wait = Duration::from_millis(timeout_ms.min(600_000));
                    self.lookups.push((ctl, key, now + wait));
                }
            },
            other => env.reply(
                ctl,
                Message::Refused {
                    reason: format!("not a control request: {other:?}"),
                },
            ),
        }
    }

    /// A termination signal (SIGTERM from a batch system ending the job): the job's
    /// processes get it too, and those holding it ask for a checkpoint first. So do not
    /// exit yet: finish a checkpoint that runs or is asked for within `grace`, then exit.
    pub fn terminate(&mut self, now: Instant, reason: String, grace: Duration) {
        if self.term.is_none() {
            tracing::info!("{reason}: exiting once a checkpoint in progress or requested within {grace:?} is done");
            self.term = Some(Term {
                reason,
                until: now + grace,
                requested: self.ckpt.is_some(),
            });
        }
    }

    /// Stops the coordinator (a signal): aborts a running checkpoint, leaves the job alone.
    pub fn shutdown(&mut self, now: Instant, env: &mut dyn Env, reason: String) {
        if self.ckpt.is_some() {
            self.fail(
                now,
                env,
                format!("the coordinator is shutting down ({reason})"),
            );
        }
        self.exit = Some(reason);
    }

    /// Time passes: timeouts, interval checkpoints, idle exit.
    pub fn tick(&mut self, now: Instant, env: &mut dyn Env) {
        let mut i = 0;
        while i < self.lookups.len() {
            if now >= self.lookups[i].2 {
                let (waiter, key, _) = self.lookups.swap_remove(i);
                env.reply(
                    waiter,
                    Message::Refused {
                        reason: format!(
                            "rendezvous {key}: the other end was not restored in time (restart every process of the job)"
                        ),
                    },
                );
            } else {
                i += 1;
            }
        }
        if self.held.as_ref().is_some_and(|(until, _)| now >= *until) {
            tracing::info!("end of the hold: terminating the job");
            self.held = None;
            self.terminate_all(env);
        }
        if let Some(t) = &self.term {
            if self.ckpt.is_none()
                && self.held.is_none()
                && (t.requested || now >= t.until)
                && self.exit.is_none()
            {
                self.exit = Some(t.reason.clone());
            }
        }
        if let Some(c) = &self.ckpt {
            if now >= c.deadline {
                let waiting: Vec<String> = c
                    .participants
                    .iter()
                    .filter(|(_, p)| match PHASES.get(c.stage) {
                        Some(_) => p.reached != Some(c.stage),
                        None => p.written.is_none(),
                    })
                    .map(|(_, p)| describe(&p.info))
                    .collect();
                let limit = if c.stage < PHASES.len() {
                    self.cfg.phase_timeout
                } else {
                    self.cfg.write_timeout
                };
                let reason = format!(
                    "timed out after {:.0}s in the {} phase waiting for {}",
                    limit.as_secs_f64(),
                    c.stage_name(),
                    waiting.join(", ")
                );
                self.fail(now, env, reason);
            }
        }
        if let (Some(due), Some(interval)) = (self.next_interval, self.cfg.interval) {
            if now >= due && self.ckpt.is_none() {
                if self.members.is_empty() {
                    self.next_interval = Some(now + interval);
                } else {
                    self.start_checkpoint(now, env, Trigger::Interval, None, false);
                }
            }
        }
        if let Some((due, at)) = self.deadline {
            // A checkpoint in progress at the deadline is let finish; the deadline one
            // follows it (it then holds the newest state).
            if now >= due && self.ckpt.is_none() && self.exit.is_none() {
                self.deadline = None;
                if self.members.is_empty() {
                    tracing::warn!(
                        "deadline {at} reached with no process connected: nothing to checkpoint"
                    );
                } else {
                    tracing::info!("deadline {at} reached: checkpointing");
                    self.start_checkpoint(now, env, Trigger::Deadline, None, false);
                }
            }
        }
        if let Some(idle) = self.cfg.exit_when_idle {
            if self.members.is_empty()
                && self.ckpt.is_none()
                && self.exit.is_none()
                && self.lookups.is_empty()
            {
                if self.ever_joined && now.duration_since(self.idle_since) >= idle {
                    self.exit = Some(format!(
                        "no process has been connected for {:.0}s",
                        idle.as_secs_f64()
                    ));
                } else if !self.ever_joined && now.duration_since(self.started) >= idle * 10 {
                    self.exit = Some(format!(
                        "no process joined within {:.0}s of start",
                        (idle * 10).as_secs_f64()
                    ));
                }
            }
        }
    }

    /// The earliest instant at which [`Machine::tick`] has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(c) = &self.ckpt {
            consider(c.deadline);
        } else {
            if let Some(n) = self.next_interval {
                consider(n);
            }
            if let Some((d, _)) = self.deadline {
                consider(d);
            }
        }
        for (_, _, until) in &self.lookups {
            consider(*until);
        }
        if let Some((until, _)) = &self.held {
            consider(*until);
        }
        if let Some(idle) = self.cfg.exit_when_idle {
            if self.members.is_empty() {
                consider(if self.ever_joined {
                    self.idle_since + idle
                } else {
                    self.started + idle * 10
                });
            }
        }
        t
    }

    pub fn status(&self, now: Instant) -> Status {
        let processes = self
            .members
            .iter()
            .map(|(id, m)| {
                let state = match &self.ckpt {
                    Some(c) => match c.participants.get(id) {
                        None => "running (joined during checkpoint)".to_string(),
                        Some(p) if p.written.is_some() => "running (image written)".into(),
                        Some(_) if c.stage >= PHASES.len() => "running (writing image)".into(),
                        Some(p) => match p.reached {
                            Some(i) if i == c.stage => {
                                format!("checkpointing ({} reached)", c.stage_name())
                            }
                            _ => format!("checkpointing ({})", c.stage_name()),
                        },
                    },
                    None => "running".into(),
                };
                ProcessStatus {
                    info: m.info.clone(),
                    state,
                }
            })
            .collect();
        let next_interval = match (self.cfg.interval, self.next_interval, &self.ckpt) {
            (Some(_), Some(due), None) => Some(due),
            _ => None,
        };
        let next_checkpoint_in = [next_interval, self.deadline.map(|(d, _)| d)]
            .into_iter()
            .flatten()
            .min()
            .map(|due| due.saturating_duration_since(now).as_secs_f64());
        Status {
            coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: ckpt_protocol::PROTOCOL_VERSION,
            coordinator_pid: self.cfg.coordinator_pid,
            job_id: self.cfg.job_id.clone(),
            ckpt_dir: self.cfg.ckpt_dir.clone(),
            socket: self.cfg.socket.clone(),
            addresses: self.cfg.addresses.clone(),
            processes,
            last_checkpoint: self.last.clone(),
            next_checkpoint_in,
            interval_seconds: self.cfg.interval.map(|d| d.as_secs_f64()),
            deadline_unix: self.deadline.map(|(_, at)| at),
            busy: self.ckpt.is_some(),
        }
    }

    /// Starts a checkpoint, or joins the running one: a request while a checkpoint is in
    /// progress gets that checkpoint's result (and its `kill` applies if it commits).
    pub fn start_checkpoint(
        &mut self,
        now: Instant,
        env: &mut dyn Env,
        trigger: Trigger,
        waiter: Option<CtlId>,
        kill: bool,
    ) {
        if let Some(c) = self.ckpt.as_mut() {
            tracing::info!(
                "checkpoint request joins the running checkpoint of generation {}",
                c.generation
            );
            c.waiters.extend(waiter);
            c.kill |= kill;
            return;
        }
        if self.members.is_empty() {
            if let Some(w) = waiter {
                env.reply(
                    w,
                    Message::CheckpointFailed {
                        error: "no process of the job is connected to the coordinator; nothing to checkpoint".into(),
                    },
                );
            }
            self.reschedule(now);
            return;
        }
        let (generation, dir) = match env.begin_generation() {
            Ok(x) => x,
            Err(e) => {
                let error = format!("cannot create the next generation directory: {e:#}");
                tracing::error!("{error}");
                env.event(Event::CheckpointFailed {
                    generation: None,
                    error: error.clone(),
                    seconds: 0.0,
                });
                if let Some(w) = waiter {
                    env.reply(w, Message::CheckpointFailed { error });
                }
                self.reschedule(now);
                return;
            }
        };
        tracing::info!(
            "checkpoint of generation {generation} started ({}, {} processes)",
            trigger.name(),
            self.members.len()
        );
        env.event(Event::CheckpointStarted {
            generation,
            trigger: trigger.name().into(),
            processes: self.members.len(),
        });
        let participants = self
            .members
            .iter()
            .map(|(id, m)| {
                let p = Progress {
                    info: m.info.clone(),
                    reached: None,
                    written: None,
                };
                (*id, p)
            })
            .collect();
        self.ckpt = Some(Running {
            generation,
            dir,
            started: now,
            stage: 0,
            deadline: now + self.cfg.phase_timeout,
            participants,
            reached_count: 0,
            written_count: 0,
            waiters: waiter.into_iter().collect(),
            kill,
            kill_by_term: false,
        });
        self.send_barrier(env);
    }

    fn send_barrier(&mut self, env: &mut dyn Env) {
        let c = self.ckpt.as_ref().expect("checkpoint running");
        let phase = PHASES[c.stage];
        let dir = c.dir.to_string_lossy().into_owned();
        tracing::debug!("generation {}: barrier {phase:?}", c.generation);
        for id in c.participants.keys() {
            env.send(
                *id,
                Message::Barrier {
                    generation: c.generation,
                    phase,
                    dir: dir.clone(),
                    hold: c.kill && phase == Phase::Resume,
                },
            );
        }
    }

    /// Moves on when everyone reached the current phase / wrote the image.
    fn advance(&mut self, now: Instant, env: &mut dyn Env) {
        let Some(c) = self.ckpt.as_mut() else { return };
        if c.stage < PHASES.len() {
            if c.reached_count < c.participants.len() {
                return;
            }
            debug_assert!(c.participants.values().all(|p| p.reached == Some(c.stage)));
            c.stage += 1;
            c.reached_count = 0;
            if c.stage < PHASES.len() {
                c.deadline = now + self.cfg.phase_timeout;
                self.send_barrier(env);
                return;
            }
            c.deadline = now + self.cfg.write_timeout;
        }
        if c.written_count == c.participants.len() {
            self.commit(now, env);
        }
    }

    fn commit(&mut self, now: Instant, env: &mut dyn Env) {
        let c = self.ckpt.as_ref().expect("checkpoint running");
        // Participants that wrote their image and exited since are still part of it.
        let mut images: Vec<CommittedImage> = c
            .participants
            .values()
            .filter_map(|p| {
                Some(CommittedImage {
                    info: p.info.clone(),
                    written: p.written.clone()?,
                })
            })
            .collect();
        images.sort_by_key(|i| i.info.vpid);
        let generation = c.generation;
        let summary = CheckpointSummary {
            generation,
            path: c.dir.to_string_lossy().into_owned(),
            bytes: images.iter().map(|i| i.written.bytes).sum(),
            seconds: now.duration_since(c.started).as_secs_f64(),
            stopped_seconds: images
                .iter()
                .map(|i| i.written.stopped_seconds)
                .fold(0.0, f64::max),
            committed_unix: unix_now(),
        };
        if let Err(e) = env.commit_generation(generation, &images, &summary) {
            self.fail(
                now,
                env,
                format!("cannot commit generation {generation}: {e:#}"),
            );
            return;
        }
        env.prune(self.cfg.keep);
        let c = self.ckpt.take().expect("checkpoint running");
        tracing::info!(
            "generation {generation} committed: {} bytes in {:.3}s",
            summary.bytes,
            summary.seconds
        );
        env.event(Event::CheckpointCommitted {
            generation,
            bytes: summary.bytes,
            seconds: summary.seconds,
            stopped_seconds: summary.stopped_seconds,
            processes: images.len(),
        });
        for w in &c.waiters {
            env.reply(*w, Message::CheckpointDone(summary.clone()));
        }
        self.last = Some(summary.clone());
        match (c.kill, c.kill_by_term, self.cfg.term_hold) {
            (true, true, Some(hold)) if !hold.is_zero() => {
                tracing::info!(
                    "holding the job stopped at generation {generation} for {:.0}s before ending it (SIGTERM; a preempting batch system requeues it meanwhile)",
                    hold.as_secs_f64()
                );
                self.held = Some((now + hold, summary));
            }
            (true, _, _) => {
                tracing::info!("terminating the job after the checkpoint (--kill)");
                self.terminate_all(env);
            }
            _ => {}
        }
        self.reschedule(now);
    }

    fn terminate_all(&mut self, env: &mut dyn Env) {
        for id in self.members.keys() {
            env.send(*id, Message::Terminate);
        }
    }

    /// Aborts the running checkpoint.
    fn fail(&mut self, now: Instant, env: &mut dyn Env, reason: String) {
        let Some(c) = self.ckpt.take() else { return };
        let error = format!("checkpoint of generation {} failed: {reason}", c.generation);
        tracing::error!("{error}");
        for id in c.participants.keys() {
            if self.members.contains_key(id) {
                env.send(
                    *id,
                    Message::Abort {
                        generation: c.generation,
                        reason: reason.clone(),
                    },
                );
            }
        }
        env.abandon_generation(c.generation);
        env.event(Event::CheckpointFailed {
            generation: Some(c.generation),
            error: reason,
            seconds: now.duration_since(c.started).as_secs_f64(),
        });
        for w in c.waiters {
            env.reply(
                w,
                Message::CheckpointFailed {
                    error: error.clone(),
                },
            );
        }
        self.reschedule(now);
    }

    fn reschedule(&mut self, now: Instant) {
        if let Some(i) = self.cfg.interval {
            self.next_interval = Some(now + i);
        }
    }
}

/// An image file name must stay inside the generation directory.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        sent: Vec<(ConnId, Message)>,
        replies: Vec<(CtlId, Message)>,
        next_gen: u64,
        committed: Vec<(u64, Vec<CommittedImage>)>,
        abandoned: Vec<u64>,
        pruned: Vec<usize>,
        events: Vec<Event>,
        fail_commit: bool,
    }

    impl Env for Fake {
        fn send(&mut self, conn: ConnId, msg: Message) {
            self.sent.push((conn, msg));
        }
        fn reply(&mut self, ctl: CtlId, msg: Message) {
            self.replies.push((ctl, msg));
        }
        fn begin_generation(&mut self) -> anyhow::Result<(u64, PathBuf)> {
            self.next_gen += 1;
            Ok((
                self.next_gen,
                PathBuf::from(format!("/ckpt/gen-{}", self.next_gen)),
            ))
        }
        fn commit_generation(
            &mut self,
            generation: u64,
            images: &[CommittedImage],
            _summary: &CheckpointSummary,
        ) -> anyhow::Result<()> {
            if self.fail_commit {
                anyhow::bail!("disk full");
            }
            self.committed.push((generation, images.to_vec()));
            Ok(())
        }
        fn abandon_generation(&mut self, generation: u64) {
            self.abandoned.push(generation);
        }
        fn prune(&mut self, keep: usize) {
            self.pruned.push(keep);
        }
        fn event(&mut self, ev: Event) {
            self.events.push(ev);
        }
    }

    impl Fake {
        fn take_sent(&mut self) -> Vec<(ConnId, Message)> {
            std::mem::take(&mut self.sent)
        }
    }

    fn info(vpid: i32) -> ProcessInfo {
        ProcessInfo {
            vpid,
            real_pid: 1000 + vpid,
            host: "node1".into(),
            program: format!("prog{vpid}"),
            restored_from: None,
            features: vec![],
            rank: None,
            step: None,
        }
    }

    fn written(generation: u64, vpid: i32) -> Message {
        Message::Written(ImageWritten {
            generation,
            file: format!("proc-{vpid}.img"),
            bytes: 100,
            stopped_seconds: 0.5,
            write_seconds: 1.0,
        })
    }

    /// A machine with processes 1..=n joined (connection id = vpid).
    fn setup(n: i32) -> (Machine, Fake, Instant) {
        let t0 = Instant::now();
        let mut m = Machine::new(Config::for_tests(), t0);
        let mut env = Fake::default();
        for v in 1..=n {
            m.process_joined(t0, &mut env, v as ConnId, info(v));
        }
        assert!(env
            .take_sent()
            .iter()
            .all(|(_, msg)| matches!(msg, Message::Welcome { .. })));
        (m, env, t0)
    }

    fn barriers(env: &mut Fake) -> Vec<(ConnId, Phase)> {
        env.take_sent()
            .into_iter()
            .map(|(c, m)| match m {
                Message::Barrier { phase, .. } => (c, phase),
                other => panic!("expected a barrier, got {other:?}"),
            })
            .collect()
    }

    /// Runs every phase for `conns`; leaves the machine waiting for images.
    fn run_phases(m: &mut Machine, env: &mut Fake, t: Instant, generation: u64, conns: &[ConnId]) {
        for phase in PHASES {
            let b = barriers(env);
            assert_eq!(b.len(), conns.len(), "phase {phase:?}");
            assert!(b.iter().all(|(_, p)| *p == phase));
            for c in conns {
                m.process_message(t, env, *c, Message::BarrierReached { generation, phase });
            }
        }
        assert!(env.sent.is_empty());
    }

    #[test]
    fn full_checkpoint_commits_and_replies() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 7, Message::Checkpoint { kill: false });
        assert!(m.busy());
        run_phases(&mut m, &mut env, t, 1, &[1, 2]);
        assert!(env.replies.is_empty());
        m.process_message(t, &mut env, 2, written(1, 2));
        assert!(env.committed.is_empty());
        m.process_message(t, &mut env, 1, written(1, 1));
        assert_eq!(env.committed.len(), 1);
        let (g, imgs) = &env.committed[0];
        assert_eq!(*g, 1);
        assert_eq!(
            imgs.iter().map(|i| i.info.vpid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(env.pruned, vec![3]);
        match &env.replies[..] {
            [(7, Message::CheckpointDone(s))] => {
                assert_eq!(s.generation, 1);
                assert_eq!(s.bytes, 200);
                assert_eq!(s.path, "/ckpt/gen-1");
                assert_eq!(s.stopped_seconds, 0.5);
            }
            other => panic!("{other:?}"),
        }
        assert!(!m.busy());
        assert_eq!(m.status(t).last_checkpoint.unwrap().generation, 1);
        assert!(env.sent.is_empty(), "no terminate without kill");
    }

    #[test]
    fn next_phase_waits_for_all() {
        let (mut m, mut env, t) = setup(3);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        assert_eq!(barriers(&mut env).len(), 3);
        for c in [1, 2] {
            m.process_message(
                t,
                &mut env,
                c,
                Message::BarrierReached {
                    generation: 1,
                    phase: Phase::Suspend,
                },
            );
        }
        assert!(env.sent.is_empty());
        // A duplicate report changes nothing.
        m.process_message(
            t,
            &mut env,
            2,
            Message::BarrierReached {
                generation: 1,
                phase: Phase::Suspend,
            },
        );
        assert!(env.sent.is_empty());
        m.process_message(
            t,
            &mut env,
            3,
            Message::BarrierReached {
                generation: 1,
                phase: Phase::Suspend,
            },
        );
        let b = barriers(&mut env);
        assert_eq!(
            b,
            vec![(1, Phase::Drain), (2, Phase::Drain), (3, Phase::Drain)]
        );
        let st = m.status(t);
        assert!(st.busy);
        assert!(st
            .processes
            .iter()
            .all(|p| p.state.starts_with("checkpointing")));
    }

    #[test]
    fn failed_process_aborts_everyone() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 9, Message::Checkpoint { kill: true });
        env.take_sent();
        m.process_message(
            t,
            &mut env,
            2,
            Message::Failed {
                generation: 1,
                error: "no space left".into(),
            },
        );
        assert!(!m.busy());
        assert_eq!(env.abandoned, vec![1]);
        assert!(env.committed.is_empty());
        let aborts: Vec<ConnId> = env
            .take_sent()
            .into_iter()
            .map(|(c, msg)| {
                assert!(matches!(msg, Message::Abort { generation: 1, .. }));
                c
            })
            .collect();
        assert_eq!(aborts, vec![1, 2]);
        match &env.replies[..] {
            [(9, Message::CheckpointFailed { error })] => {
                assert!(error.contains("vpid 2"), "{error}");
                assert!(error.contains("prog2"), "{error}");
                assert!(error.contains("no space left"), "{error}");
                assert!(error.contains("suspend"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // The job goes on: the next checkpoint gets the next number and can succeed.
        m.control(t, &mut env, 10, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 2, &[1, 2]);
        m.process_message(t, &mut env, 1, written(2, 1));
        m.process_message(t, &mut env, 2, written(2, 2));
        assert_eq!(env.committed.len(), 1);
        assert_eq!(env.committed[0].0, 2);
    }

    #[test]
    fn disconnect_mid_checkpoint_aborts_others() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        env.take_sent();
        m.process_message(
            t,
            &mut env,
            1,
            Message::BarrierReached {
                generation: 1,
                phase: Phase::Suspend,
            },
        );
        m.process_left(t, &mut env, 2, "connection closed");
        assert_eq!(env.abandoned, vec![1]);
        assert_eq!(
            env.take_sent(),
            vec![(
                1,
                Message::Abort {
                    generation: 1,
                    reason: match &env.replies[0].1 {
                        Message::CheckpointFailed { error } => {
                            assert!(error.contains("disconnected"), "{error}");
                            error.split_once(": ").unwrap().1.to_string()
                        }
                        other => panic!("{other:?}"),
                    }
                }
            )]
        );
        assert_eq!(m.process_count(), 1);
    }

    #[test]
    fn exit_after_written_does_not_abort() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 1, &[1, 2]);
        m.process_message(t, &mut env, 1, written(1, 1));
        m.process_left(t, &mut env, 1, "connection closed");
        assert!(m.busy());
        m.process_message(t, &mut env, 2, written(1, 2));
        assert_eq!(env.committed[0].1.len(), 2);
        assert!(matches!(env.replies[0].1, Message::CheckpointDone(_)));
    }

    #[test]
    fn phase_timeout_names_laggards() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        m.process_message(
            t,
            &mut env,
            1,
            Message::BarrierReached {
                generation: 1,
                phase: Phase::Suspend,
            },
        );
        m.tick(t + Duration::from_secs(59), &mut env);
        assert!(m.busy());
        assert_eq!(m.next_wakeup(), Some(t + Duration::from_secs(60)));
        m.tick(t + Duration::from_secs(60), &mut env);
        assert!(!m.busy());
        match &env.replies[..] {
            [(1, Message::CheckpointFailed { error })] => {
                assert!(
                    error.contains("timed out after 60s in the suspend phase"),
                    "{error}"
                );
                assert!(error.contains("vpid 2"), "{error}");
                assert!(!error.contains("vpid 1"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn write_timeout_is_separate() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.tick(t + Duration::from_secs(300), &mut env);
        assert!(m.busy());
        m.tick(t + Duration::from_secs(600), &mut env);
        assert!(!m.busy());
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("write phase"))
        );
    }

    #[test]
    fn wrong_phase_is_a_protocol_error_and_stale_generation_ignored() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        m.process_message(
            t,
            &mut env,
            1,
            Message::BarrierReached {
                generation: 0,
                phase: Phase::Suspend,
            },
        );
        assert!(m.busy(), "stale generation ignored");
        m.process_message(
            t,
            &mut env,
            1,
            Message::Failed {
                generation: 0,
                error: "old".into(),
            },
        );
        assert!(m.busy(), "stale failure ignored");
        m.process_message(
            t,
            &mut env,
            1,
            Message::BarrierReached {
                generation: 1,
                phase: Phase::Snapshot,
            },
        );
        assert!(!m.busy());
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("snapshot phase while"))
        );
    }

    #[test]
    fn bad_file_name_fails() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.process_message(
            t,
            &mut env,
            1,
            Message::Written(ImageWritten {
                generation: 1,
                file: "../escape".into(),
                bytes: 1,
                stopped_seconds: 0.0,
                write_seconds: 0.0,
            }),
        );
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("invalid image file name"))
        );
    }

    #[test]
    fn commit_failure_abandons() {
        let (mut m, mut env, t) = setup(1);
        env.fail_commit = true;
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.process_message(t, &mut env, 1, written(1, 1));
        assert_eq!(env.abandoned, vec![1]);
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("disk full"))
        );
    }

    #[test]
    fn join_during_suspend_aborts_but_after_snapshot_does_not() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        m.process_joined(t, &mut env, 5, info(5));
        assert!(!m.busy());
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("joined the job during the suspend phase"))
        );

        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        for phase in [Phase::Suspend, Phase::Drain, Phase::Snapshot] {
            m.process_message(
                t,
                &mut env,
                1,
                Message::BarrierReached {
                    generation: 1,
                    phase,
                },
            );
        }
        m.process_joined(t, &mut env, 5, info(5));
        assert!(m.busy());
        env.take_sent();
        for phase in [Phase::Refill, Phase::Resume] {
            m.process_message(
                t,
                &mut env,
                1,
                Message::BarrierReached {
                    generation: 1,
                    phase,
                },
            );
        }
        // Barriers go to participants only.
        assert!(env.take_sent().iter().all(|(c, _)| *c == 1));
        m.process_message(t, &mut env, 1, written(1, 1));
        assert_eq!(env.committed[0].1.len(), 1);
    }

    #[test]
    fn request_while_busy_joins_running_checkpoint() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        m.control(t, &mut env, 2, Message::Checkpoint { kill: true });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.process_message(t, &mut env, 1, written(1, 1));
        assert_eq!(env.replies.len(), 2);
        assert!(env
            .replies
            .iter()
            .all(|(_, r)| matches!(r, Message::CheckpointDone(s) if s.generation == 1)));
        // The joined request asked for --kill.
        assert_eq!(env.take_sent(), vec![(1, Message::Terminate)]);
    }

    #[test]
    fn no_processes_fails_immediately() {
        let (mut m, mut env, t) = setup(0);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        assert!(
            matches!(&env.replies[0].1, Message::CheckpointFailed { error } if error.contains("no process"))
        );
        assert_eq!(env.next_gen, 0, "no generation directory created");
    }

    #[test]
    fn interval_triggers_and_reschedules() {
        let t0 = Instant::now();
        let mut cfg = Config::for_tests();
        cfg.interval = Some(Duration::from_secs(30));
        let mut m = Machine::new(cfg, t0);
        let mut env = Fake::default();
        m.tick(t0 + Duration::from_secs(30), &mut env);
        assert!(!m.busy(), "no process: nothing to do");
        assert_eq!(m.next_wakeup(), Some(t0 + Duration::from_secs(60)));
        m.process_joined(t0, &mut env, 1, info(1));
        env.take_sent();
        let t1 = t0 + Duration::from_secs(60);
        assert!(
            (m.status(t0 + Duration::from_secs(50))
                .next_checkpoint_in
                .unwrap()
                - 10.0)
                .abs()
                < 1e-6
        );
        m.tick(t1, &mut env);
        assert!(m.busy());
        run_phases(&mut m, &mut env, t1, 1, &[1]);
        m.process_message(t1, &mut env, 1, written(1, 1));
        assert_eq!(env.committed.len(), 1);
        assert!(env.replies.is_empty());
        assert_eq!(m.next_wakeup(), Some(t1 + Duration::from_secs(30)));
    }

    #[test]
    fn deadline_triggers_once_after_a_running_checkpoint() {
        let t0 = Instant::now();
        let mut cfg = Config::for_tests();
        cfg.deadline_unix = Some(unix_now() + 100);
        let mut m = Machine::new(cfg, t0);
        let mut env = Fake::default();
        m.process_joined(t0, &mut env, 1, info(1));
        env.take_sent();
        let st = m.status(t0);
        assert!(st.deadline_unix.is_some());
        let left = st.next_checkpoint_in.unwrap();
        assert!((99.0..=100.0).contains(&left), "{left}");
        assert_eq!(m.next_wakeup(), Some(t0 + Duration::from_secs(100)));
        m.tick(t0 + Duration::from_secs(99), &mut env);
        assert!(!m.busy(), "not due yet");
        // a requested checkpoint is running when the deadline comes: it is let finish
        let t1 = t0 + Duration::from_secs(99);
        m.start_checkpoint(t1, &mut env, Trigger::Request, None, false);
        assert!(m.busy());
        let t2 = t0 + Duration::from_secs(101);
        m.tick(t2, &mut env);
        run_phases(&mut m, &mut env, t2, 1, &[1]);
        m.process_message(t2, &mut env, 1, written(1, 1));
        assert_eq!(env.committed.len(), 1);
        assert!(!m.busy());
        // then the deadline checkpoint starts, once
        m.tick(t2, &mut env);
        assert!(m.busy(), "the deadline checkpoint follows the running one");
        run_phases(&mut m, &mut env, t2, 2, &[1]);
        m.process_message(t2, &mut env, 1, written(2, 1));
        assert_eq!(env.committed.len(), 2);
        assert!(m.status(t2).deadline_unix.is_none());
        m.tick(t2 + Duration::from_secs(1000), &mut env);
        assert!(!m.busy(), "a deadline fires once");
        assert!(env
            .events
            .iter()
            .any(|e| format!("{e:?}").contains("deadline")));
    }

    #[test]
    fn idle_exit() {
        let t0 = Instant::now();
        let mut cfg = Config::for_tests();
        cfg.exit_when_idle = Some(Duration::from_secs(5));
        let mut m = Machine::new(cfg.clone(), t0);
        let mut env = Fake::default();
        m.tick(t0 + Duration::from_secs(49), &mut env);
        assert!(m.exit_reason().is_none());
        m.tick(t0 + Duration::from_secs(50), &mut env);
        assert!(m.exit_reason().unwrap().contains("no process joined"));

        let mut m = Machine::new(cfg, t0);
        m.process_joined(t0, &mut env, 1, info(1));
        m.tick(t0 + Duration::from_secs(100), &mut env);
        assert!(m.exit_reason().is_none(), "a process is connected");
        let t1 = t0 + Duration::from_secs(101);
        m.process_left(t1, &mut env, 1, "exited");
        m.tick(t1 + Duration::from_secs(4), &mut env);
        assert!(m.exit_reason().is_none());
        m.tick(t1 + Duration::from_secs(5), &mut env);
        assert!(m
            .exit_reason()
            .unwrap()
            .contains("no process has been connected"));
    }

    /// With --term-hold, a checkpoint that processes asked for on SIGTERM holds the job
    /// stopped (no Terminate) for the hold time; a checkpoint command meanwhile is answered
    /// with that checkpoint; then the job is terminated. A command's --kill is not held.
    #[test]
    fn term_hold_keeps_the_job_stopped_until_requeued() {
        let t0 = Instant::now();
        let mut cfg = Config::for_tests();
        cfg.term_hold = Some(Duration::from_secs(15));
        let mut m = Machine::new(cfg, t0);
        let mut env = Fake::default();
        m.process_joined(t0, &mut env, 1, info(1));
        m.process_joined(t0, &mut env, 2, info(2));
        env.take_sent();
        m.process_message(t0, &mut env, 2, Message::RequestCheckpoint { kill: true });
        run_phases(&mut m, &mut env, t0, 1, &[1, 2]);
        m.process_message(t0, &mut env, 1, written(1, 1));
        m.process_message(t0, &mut env, 2, written(1, 2));
        assert_eq!(env.committed.len(), 1);
        assert!(env.sent.is_empty(), "held, not terminated: {:?}", env.sent);
        // the other process's SIGTERM comes later: nothing new
        m.process_message(t0, &mut env, 1, Message::RequestCheckpoint { kill: true });
        assert!(!m.busy());
        // the batch system's agent asks for a checkpoint: it is the held one
        let t1 = t0 + Duration::from_secs(5);
        m.control(t1, &mut env, 7, Message::Checkpoint { kill: false });
        assert!(
            matches!(&env.replies[..], [(7, Message::CheckpointDone(s))] if s.generation == 1),
            "{:?}",
            env.replies
        );
        assert_eq!(env.committed.len(), 1, "no new generation while held");
        m.tick(t0 + Duration::from_secs(14), &mut env);
        assert!(env.sent.is_empty());
        m.tick(t0 + Duration::from_secs(15), &mut env);
        let terms = env
            .take_sent()
            .into_iter()
            .filter(|(_, msg)| matches!(msg, Message::Terminate))
            .count();
        assert_eq!(terms, 2, "terminated at the end of the hold");
        // a command's --kill terminates at once
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 3, Message::Checkpoint { kill: true });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.process_message(t, &mut env, 1, written(1, 1));
        assert!(env
            .sent
            .iter()
            .any(|(_, msg)| matches!(msg, Message::Terminate)));
    }

    #[test]
    fn shutdown_with_kill_terminates_and_aborts() {
        let (mut m, mut env, t) = setup(2);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        env.take_sent();
        m.control(t, &mut env, 2, Message::Shutdown { kill: true });
        let sent = env.take_sent();
        assert!(sent.contains(&(1, Message::Terminate)) && sent.contains(&(2, Message::Terminate)));
        assert!(matches!(
            env.replies[0],
            (1, Message::CheckpointFailed { .. })
        ));
        assert_eq!(env.replies[1], (2, Message::Ok));
        assert!(m.exit_reason().is_some());
    }

    #[test]
    fn events_journal_the_story() {
        let (mut m, mut env, t) = setup(1);
        m.control(t, &mut env, 1, Message::Checkpoint { kill: false });
        run_phases(&mut m, &mut env, t, 1, &[1]);
        m.process_message(t, &mut env, 1, written(1, 1));
        m.process_left(t, &mut env, 1, "exited");
        let kinds: Vec<&str> = env
            .events
            .iter()
            .map(|e| match e {
                Event::ProcessJoined { .. } => "joined",
                Event::CheckpointStarted { .. } => "started",
                Event::CheckpointCommitted { .. } => "committed",
                Event::ProcessLeft { .. } => "left",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["joined", "started", "committed", "left"]);
    }
}
