//! Sockets around the [`Machine`]: one thread, one epoll event loop over the listening
//! sockets (UNIX, and TCP with `--listen`), a signalfd and every connection. All state
//! changes happen on this loop, so the machine needs no locks, and a connection costs a
//! few hundred bytes instead of a thread.
//!
//! Every connection starts with the authenticated handshake ([`ServerHandshake`]): frames
//! are limited to [`HANDSHAKE_MAX_FRAME`] and the whole exchange to [`HANDSHAKE_TIMEOUT`];
//! a client that fails it, sends garbage or an oversized frame, or stalls is dropped. None
//! of that reaches the machine, so the job never notices. On a UNIX socket the peer must
//! also be the coordinator's own user (or root).
//!
//! Writes are non-blocking and buffered per connection; a process that does not read its
//! socket for [`WRITE_TIMEOUT`] is disconnected (which aborts a running checkpoint it takes
//! part in).

use crate::events::{Event, Journal};
use crate::machine::{CommittedImage, ConnId, CtlId, Env, Machine};
use crate::store::GenerationStore;
use crate::sys::{self, Epoll};
use ckpt_protocol::auth::{self, Secret, ServerHandshake, Step};
use ckpt_protocol::{
    decode_frame, encode, CheckpointSummary, FrameError, Message, Role, HANDSHAKE_MAX_FRAME,
    MAX_FRAME, PROTOCOL_VERSION,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write to one connection may stay blocked.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unanswered bytes queued for one connection before it is dropped.
const MAX_QUEUED: usize = 64 << 20;
/// Connections still in their handshake; more are closed at once (a flood of
/// unauthenticated connections cannot exhaust the coordinator).
pub const MAX_PENDING_HANDSHAKES: usize = 4096;
/// The loop wakes at least this often.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Bytes read from one connection per wake-up (fairness).
const READ_BUDGET: usize = 1 << 20;

const TOKEN_UNIX: u64 = 1;
const TOKEN_TCP: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const FIRST_CONN: u64 = 16;

/// The listening sockets.
pub struct Listeners {
    pub unix: UnixListener,
    pub tcp: Option<TcpListener>,
}

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
}

enum State {
    Handshake(Box<ServerHandshake>),
    Process,
    /// A command client; `waiting`: a request is being answered (requests are taken one
    /// at a time, in order).
    Control {
        waiting: bool,
    },
}

struct Conn {
    sock: Sock,
    peer: String,
    state: State,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// EPOLLOUT is armed.
    want_out: bool,
    blocked_since: Option<Instant>,
    /// Close once the queued bytes are out (after a refusal); read nothing more.
    close_after_flush: bool,
    deadline: Option<Instant>,
}

/// The effects of the machine, for real, plus the connections.
struct Live {
    epoll: Epoll,
    conns: HashMap<ConnId, Conn>,
    ctls: HashMap<CtlId, ConnId>,
    /// Processes whose connection was closed by us: the machine must hear they left.
    left: Vec<(ConnId, String)>,
    /// Control connections whose pending request was answered: read their next one.
    ready_ctl: Vec<ConnId>,
    blocked: HashSet<ConnId>,
    store: Box<dyn GenerationStore>,
    journal: Journal,
    /// The last broadcast message and its frame (one encoding for N participants).
    cache: Option<(Message, Vec<u8>)>,
    /// Connections still in their handshake.
    pending_handshakes: usize,
}

impl Live {
    fn interest(c: &Conn) -> u32 {
        let mut ev = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if c.want_out {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }

    /// Queues a frame for `id` and writes what the socket takes now.
    fn queue(&mut self, id: ConnId, frame: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.wbuf.len() - c.wpos + frame.len() > MAX_QUEUED {
            self.close(
                id,
                "it does not read its socket (too much unsent data)".into(),
            );
            return;
        }
        c.wbuf.extend_from_slice(frame);
        self.flush(id);
    }

    fn flush(&mut self, id: ConnId) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut err = None;
        while c.wpos < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    err = Some("connection closed".to_string());
                    break;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(format!("write failed: {e}"));
                    break;
                }
            }
        }
        if let Some(e) = err {
            self.close(id, e);
            return;
        }
        let pending = c.wpos < c.wbuf.len();
        if !pending {
            c.wbuf.clear();
            c.wpos = 0;
            c.blocked_since = None;
            self.blocked.remove(&id);
            if c.close_after_flush {
                self.close(id, "refused".into());
                return;
            }
        } else if c.blocked_since.is_none() {
            c.blocked_since = Some(now);
            self.blocked.insert(id);
        }
        if pending != c.want_out {
            c.want_out = pending;
            let _ = self.epoll.modify(c.sock.fd(), Self::interest(c), id);
        }
    }

    /// Closes a connection; a process's departure is reported to the machine later.
    fn close(&mut self, id: ConnId, reason: String) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.epoll.delete(c.sock.fd());
        self.blocked.remove(&id);
        match c.state {
            State::Process => self.left.push((id, reason)),
            State::Handshake(_) => {
                self.pending_handshakes -= 1;
                tracing::debug!("connection {id} from {} dropped: {reason}", c.peer)
            }
            State::Control { .. } => {}
        }
    }

    fn send_msg(&mut self, id: ConnId, msg: &Message) {
        let frame = encode(msg);
        self.queue(id, &frame);
    }
}

impl Env for Live {
    fn send(&mut self, conn: ConnId, msg: Message) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        // Barriers, aborts and terminations go to every participant alike: encode once.
        let broadcast = matches!(
            msg,
            Message::Barrier { .. } | Message::Abort { .. } | Message::Terminate
        );
        if broadcast {
            let hit = matches!(&self.cache, Some((m, _)) if *m == msg);
            if !hit {
                let frame = encode(&msg);
                self.cache = Some((msg, frame));
            }
            let frame = std::mem::take(&mut self.cache.as_mut().expect("cached").1);
            self.queue(conn, &frame);
            self.cache.as_mut().expect("cached").1 = frame;
        } else {
            self.send_msg(conn, &msg);
        }
    }

    fn reply(&mut self, ctl: CtlId, msg: Message) {
        let Some(id) = self.ctls.remove(&ctl) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = State::Control { waiting: false };
            self.ready_ctl.push(id);
        }
        self.send_msg(id, &msg);
    }

    fn begin_generation(&mut self) -> anyhow::Result<(u64, PathBuf)> {
        self.store.begin()
    }

    fn commit_generation(
        &mut self,
        generation: u64,
        images: &[CommittedImage],
        summary: &CheckpointSummary,
    ) -> anyhow::Result<()> {
        self.store.commit(generation, images, summary)
    }

    fn abandon_generation(&mut self, generation: u64) {
        if let Err(e) = self.store.abandon(generation) {
            tracing::warn!("cannot remove the abandoned generation {generation}: {e:#}");
        }
    }

    fn prune(&mut self, keep: usize) {
        if let Err(e) = self.store.prune(keep) {
            tracing::warn!("cannot prune old generations: {e:#}");
        }
    }

    fn event(&mut self, ev: Event) {
        self.journal.record(&ev);
    }
}

/// The event loop's own state besides [`Live`].
struct Server {
    env: Live,
    machine: Machine,
    listeners: Listeners,
    signals: std::fs::File,
    secret: Secret,
    uid: u32,
    next_conn: ConnId,
    next_ctl: CtlId,
    /// (deadline, conn) of handshakes, in accept order (deadlines only grow).
    deadlines: VecDeque<(Instant, ConnId)>,
    scratch: Vec<u8>,
}

/// Runs the coordinator until it should exit; returns why it exited. The exit signals must
/// be blocked (see [`sys::block_exit_signals`]).
pub fn serve(
    listeners: Listeners,
    machine: Machine,
    store: Box<dyn GenerationStore>,
    journal: Journal,
    secret: Secret,
) -> String {
    match Server::new(listeners, machine, store, journal, secret) {
        Ok(mut s) => s.run(),
        Err(e) => format!("cannot set up the event loop: {e}"),
    }
}

impl Server {
    fn new(
        listeners: Listeners,
        machine: Machine,
        store: Box<dyn GenerationStore>,
        journal: Journal,
        secret: Secret,
    ) -> io::Result<Server> {
        let epoll = Epoll::new()?;
        let signals = sys::exit_signalfd()?;
        let ev_in = libc::EPOLLIN as u32;
        listeners.unix.set_nonblocking(true)?;
        epoll.add(listeners.unix.as_raw_fd(), ev_in, TOKEN_UNIX)?;
        if let Some(t) = &listeners.tcp {
            t.set_nonblocking(true)?;
            epoll.add(t.as_raw_fd(), ev_in, TOKEN_TCP)?;
        }
        epoll.add(signals.as_raw_fd(), ev_in, TOKEN_SIGNAL)?;
        Ok(Server {
            env: Live {
                epoll,
                conns: HashMap::new(),
                ctls: HashMap::new(),
                left: Vec::new(),
                ready_ctl: Vec::new(),
                blocked: HashSet::new(),
                store,
                journal,
                cache: None,
                pending_handshakes: 0,
            },
            machine,
            listeners,
            signals,
            secret,
            uid: sys::geteuid(),
            next_conn: FIRST_CONN,
            next_ctl: 1,
            deadlines: VecDeque::new(),
            scratch: vec![0u8; 64 << 10],
        })
    }

    fn run(&mut self) -> String {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            let now = Instant::now();
            let mut wake = now + MAX_SLEEP;
            if let Some(t) = self.machine.next_wakeup() {
                wake = wake.min(t);
            }
            if let Some((t, _)) = self.deadlines.front() {
                wake = wake.min(*t);
            }
            let ms = wake.saturating_duration_since(now).as_millis() as i32;
            let n = match self.env.epoll.wait(&mut events, ms) {
                Ok(n) => n,
                Err(e) => return format!("epoll_wait failed: {e}"),
            };
            for ev in &events[..n] {
                let (token, bits) = (ev.u64, ev.events);
                match token {
                    TOKEN_UNIX => self.accept_unix(),
                    TOKEN_TCP => self.accept_tcp(),
                    TOKEN_SIGNAL => {
                        while let Some(sig) = sys::read_signalfd(&self.signals) {
                            let reason = format!("received signal {sig}");
                            if sig == libc::SIGTERM {
                                // The job is being ended: its processes may be asking for a
                                // last checkpoint right now; serve it, then exit.
                                self.machine.terminate(
                                    Instant::now(),
                                    reason,
                                    Duration::from_secs(10),
                                );
                            } else {
                                self.machine.shutdown(Instant::now(), &mut self.env, reason);
                            }
                        }
                    }
                    id => self.conn_event(id, bits),
                }
                self.settle();
            }
            let now = Instant::now();
            self.expire(now);
            self.machine.tick(now, &mut self.env);
            self.settle();
            if let Some(reason) = self.machine.exit_reason() {
                let reason = reason.to_string();
                // Let the last replies (e.g. Ok to Shutdown) out.
                self.drain_writes(Duration::from_millis(500));
                self.env.event(Event::CoordinatorStopped {
                    reason: reason.clone(),
                });
                return reason;
            }
        }
    }

    /// Reports closed processes to the machine and serves control clients whose previous
    /// request was answered, until nothing is left to do.
    fn settle(&mut self) {
        loop {
            if let Some((id, reason)) = self.env.left.pop() {
                self.machine
                    .process_left(Instant::now(), &mut self.env, id, &reason);
                continue;
            }
            if let Some(id) = self.env.ready_ctl.pop() {
                self.process_frames(id);
                continue;
            }
            break;
        }
    }

    /// Handshake timeouts and writes blocked for too long.
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.deadlines.front() {
            if t > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(c) = self.env.conns.get(&id) {
                if matches!(c.state, State::Handshake(_)) || c.close_after_flush {
                    tracing::warn!(
                        "connection {id} from {}: no complete handshake within {}s; dropped",
                        c.peer,
                        HANDSHAKE_TIMEOUT.as_secs()
                    );
                    self.close(id, "handshake timeout".into());
                }
            }
        }
        if !self.env.blocked.is_empty() {
            let stuck: Vec<ConnId> = self
                .env
                .blocked
                .iter()
                .copied()
                .filter(|id| {
                    self.env
                        .conns
                        .get(id)
                        .and_then(|c| c.blocked_since)
                        .is_some_and(|t| now.duration_since(t) >= WRITE_TIMEOUT)
                })
                .collect();
            for id in stuck {
                tracing::warn!(
                    "connection {id}: a write has been blocked for {}s; disconnecting it",
                    WRITE_TIMEOUT.as_secs()
                );
                self.close(
                    id,
                    format!(
                        "it did not read its socket for {}s",
                        WRITE_TIMEOUT.as_secs()
                    ),
                );
            }
        }
        self.settle();
    }

    fn close(&mut self, id: ConnId, reason: String) {
        self.env.close(id, reason);
    }

    /// Best effort: writes queued bytes for up to `limit` before exiting.
    fn drain_writes(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while !self.env.blocked.is_empty() && t0.elapsed() < limit {
            let ids: Vec<ConnId> = self.env.blocked.iter().copied().collect();
            for id in ids {
                self.env.flush(id);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn accept_unix(&mut self) {
        loop {
            match self.listeners.unix.accept() {
                Ok((s, _)) => {
                    match sys::peer_uid(s.as_raw_fd()) {
                        Ok(uid) if uid == self.uid || uid == 0 => {}
                        Ok(uid) => {
                            tracing::warn!(
                                "refused a connection from uid {uid}: this job belongs to uid {}",
                                self.uid
                            );
                            let _ = s.set_nonblocking(true);
                            let reason = format!(
                                "connection refused: this job belongs to another user (uid {})",
                                self.uid
                            );
                            let _ = (&s).write(&encode(&Message::Refused { reason }));
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("cannot identify a UNIX peer ({e}); dropped");
                            continue;
                        }
                    }
                    self.add_conn(Sock::Unix(s), "local".into());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn accept_tcp(&mut self) {
        loop {
            let Some(l) = &self.listeners.tcp else { return };
            match l.accept() {
                Ok((s, addr)) => {
                    let _ = s.set_nodelay(true);
                    self.add_conn(Sock::Tcp(s), addr.to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, sock: Sock, peer: String) {
        if self.env.pending_handshakes >= MAX_PENDING_HANDSHAKES {
            tracing::warn!(
                "{MAX_PENDING_HANDSHAKES} connections are already in their handshake; \
                 dropping a new one from {peer}"
            );
            return;
        }
        let set_nb = match &sock {
            Sock::Unix(s) => s.set_nonblocking(true),
            Sock::Tcp(s) => s.set_nonblocking(true),
        };
        let nonce = match set_nb.and_then(|_| auth::nonce()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot set up a connection from {peer}: {e}");
                return;
            }
        };
        let id = self.next_conn;
        self.next_conn += 1;
        let now = Instant::now();
        let c = Conn {
            sock,
            peer,
            state: State::Handshake(Box::new(ServerHandshake::new(self.secret.clone(), nonce))),
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            want_out: false,
            blocked_since: None,
            close_after_flush: false,
            deadline: Some(now + HANDSHAKE_TIMEOUT),
        };
        if let Err(e) = self.env.epoll.add(c.sock.fd(), Live::interest(&c), id) {
            tracing::warn!("cannot watch a new connection: {e}");
            return;
        }
        self.env.conns.insert(id, c);
        self.env.pending_handshakes += 1;
        self.deadlines.push_back((now + HANDSHAKE_TIMEOUT, id));
    }

    fn conn_event(&mut self, id: ConnId, bits: u32) {
        if bits & libc::EPOLLOUT as u32 != 0 {
            self.env.flush(id);
        }
        if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
            return;
        }
        // Read what is there (up to the budget).
        let mut closed: Option<String> = None;
        {
            let Some(c) = self.env.conns.get_mut(&id) else {
                return;
            };
            if c.close_after_flush {
                // A refused client: discard whatever it still sends.
                let _ = c.sock.read(&mut self.scratch);
                return;
            }
            let mut got = 0;
            while got < READ_BUDGET {
                match c.sock.read(&mut self.scratch) {
                    Ok(0) => {
                        closed = Some("connection closed".into());
                        break;
                    }
                    Ok(n) => {
                        c.rbuf.extend_from_slice(&self.scratch[..n]);
                        got += n;
                        // A short read drained the socket: spare the read that would only
                        // say EAGAIN (level-triggered epoll reports anything newer).
                        if n < self.scratch.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        closed = Some(format!("read failed: {e}"));
                        break;
                    }
                }
            }
        }
        // Complete frames before the end of the stream still count (a Written followed by
        // an exit).
        self.process_frames(id);
        if let Some(reason) = closed {
            self.close(id, reason);
        }
    }

    /// Decodes and handles the complete frames buffered for `id`.
    fn process_frames(&mut self, id: ConnId) {
        loop {
            let Some(c) = self.env.conns.get_mut(&id) else {
                return;
            };
            if c.close_after_flush || matches!(c.state, State::Control { waiting: true }) {
                return;
            }
            let limit = match c.state {
                State::Handshake(_) => HANDSHAKE_MAX_FRAME,
                _ => MAX_FRAME,
            };
            let msg = match decode_frame(&c.rbuf[c.rpos..], limit) {
                Ok(Some((m, used))) => {
                    c.rpos += used;
                    if c.rpos == c.rbuf.len() {
                        c.rbuf.clear();
                        c.rpos = 0;
                    } else if c.rpos > (64 << 10) {
                        c.rbuf.drain(..c.rpos);
                        c.rpos = 0;
                    }
                    m
                }
                Ok(None) => {
                    if c.rpos > 0 {
                        c.rbuf.drain(..c.rpos);
                        c.rpos = 0;
                    }
                    return;
                }
                Err(e) => {
                    self.bad_frame(id, e);
                    return;
                }
            };
            self.handle(id, msg);
        }
    }

    fn bad_frame(&mut self, id: ConnId, e: FrameError) {
        let Some(c) = self.env.conns.get_mut(&id) else {
            return;
        };
        let what = match &e {
            FrameError::TooLarge(n) => format!("a frame of {n} bytes (over the limit)"),
            FrameError::Malformed(err) => format!("a malformed message ({err})"),
            other => other.to_string(),
        };
        match c.state {
            State::Handshake(_) => {
                tracing::warn!("connection {id} from {} sent {what}; dropped", c.peer);
                self.env.close(id, "bad frame".into());
            }
            State::Control { .. } => {
                tracing::warn!("control connection {id} sent {what}; closing it");
                c.rbuf.clear();
                c.rpos = 0;
                c.close_after_flush = true;
                self.env.send_msg(
                    id,
                    &Message::Refused {
                        reason: format!("protocol error: {what}"),
                    },
                );
            }
            State::Process => self
                .env
                .close(id, format!("protocol error: it sent {what}")),
        }
    }

    fn handle(&mut self, id: ConnId, msg: Message) {
        let now = Instant::now();
        let Some(c) = self.env.conns.get_mut(&id) else {
            return;
        };
        let step = match &mut c.state {
            State::Handshake(hs) => hs.on_message(msg),
            State::Process => {
                self.machine.process_message(now, &mut self.env, id, msg);
                return;
            }
            State::Control { waiting } => {
                *waiting = true;
                let ctl = self.next_ctl;
                self.next_ctl += 1;
                self.env.ctls.insert(ctl, id);
                self.machine.control(now, &mut self.env, ctl, msg);
                return;
            }
        };
        match step {
            Step::Send(m) => self.env.send_msg(id, &m),
            Step::Reject(m, why) => {
                tracing::warn!("connection {id} from {} refused: {why}", c.peer);
                c.close_after_flush = true;
                c.rbuf.clear();
                c.rpos = 0;
                self.env.send_msg(id, &m);
            }
            Step::Accept(role) => {
                self.env.pending_handshakes -= 1;
                c.deadline = None;
                match role {
                    Role::Process(info) => {
                        c.state = State::Process;
                        // The machine sends the Welcome.
                        self.machine.process_joined(now, &mut self.env, id, info);
                    }
                    Role::Control => {
                        c.state = State::Control { waiting: false };
                        self.env.send_msg(
                            id,
                            &Message::Welcome {
                                protocol_version: PROTOCOL_VERSION,
                                coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
                            },
                        );
                    }
                }
            }
        }
    }
}
