//! The forwarder: one thread per direction inside the wire namespace. Each reads the
//! frames arriving on its ingress veth end through an AF_PACKET socket (batched with
//! recvmmsg), runs them through the [`Link`] model and writes them, when due, to the
//! egress veth end through a send-only AF_PACKET socket.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::model::{Link, LinkParams, LinkStats, Nanos};
use crate::netns;

/// Frames read per recvmmsg call.
const BATCH: usize = 64;
/// Bytes per receive slot: far above the 1514-byte frames with offloads off, so a
/// super-frame (offloads on after all) is seen and counted rather than cut.
const SLOT: usize = 65536;
/// The longest the thread sleeps without looking at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(5);
/// Receive buffer of the ingress socket: absorbs bursts while the thread is busy.
const RCVBUF: libc::c_int = 16 * 1024 * 1024;
const SNDBUF: libc::c_int = 4 * 1024 * 1024;

/// Counters of one direction, as [`crate::Wan::stats`] reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// "h1->h2" or "h2->h1".
    pub direction: &'static str,
    pub link: LinkStats,
    /// Frames the kernel dropped because the ingress socket's buffer was full (the
    /// forwarder fell behind: not part of the model, should stay 0).
    pub socket_drops: u64,
    /// Frames longer than a slot or than MTU+14 (offloads not off): dropped and counted.
    pub oversize_frames: u64,
    /// Sends that failed.
    pub send_errors: u64,
}

impl DirectionStats {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "direction": self.direction,
            "forwarded_frames": self.link.forwarded_frames,
            "forwarded_bytes": self.link.forwarded_bytes,
            "dropped_loss_frames": self.link.dropped_loss_frames,
            "dropped_loss_bytes": self.link.dropped_loss_bytes,
            "dropped_queue_frames": self.link.dropped_queue_frames,
            "dropped_queue_bytes": self.link.dropped_queue_bytes,
            "max_queue_bytes": self.link.max_queue_bytes,
            "queue_bytes": self.link.queue_bytes,
            "socket_drops": self.socket_drops,
            "oversize_frames": self.oversize_frames,
            "send_errors": self.send_errors,
        })
    }
}

/// The two forwarding threads; stopped and joined on drop.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: [Arc<Mutex<DirectionStats>>; 2],
}

/// One direction to start: read on `from`, write on `to`, both in namespace `wire`.
struct Plan {
    wire: String,
    from: String,
    to: String,
    direction: &'static str,
    params: LinkParams,
    seed: u64,
}

impl Forwarder {
    /// Starts both directions between the wire-side ends `if1` (towards host 1) and
    /// `if2`; returns once both have their sockets open.
    pub fn start(
        wire: &str,
        if1: &str,
        if2: &str,
        params: LinkParams,
        seed: u64,
    ) -> Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = [
            Arc::new(Mutex::new(DirectionStats {
                direction: "h1->h2",
                ..Default::default()
            })),
            Arc::new(Mutex::new(DirectionStats {
                direction: "h2->h1",
                ..Default::default()
            })),
        ];
        let plans = [
            Plan {
                wire: wire.into(),
                from: if1.into(),
                to: if2.into(),
                direction: "h1->h2",
                params,
                seed,
            },
            Plan {
                wire: wire.into(),
                from: if2.into(),
                to: if1.into(),
                direction: "h2->h1",
                params,
                // A different stream of loss decisions each way.
                seed: seed ^ 0x9e37_79b9_7f4a_7c15,
            },
        ];
        let mut forwarder = Forwarder {
            stop: stop.clone(),
            threads: Vec::new(),
            stats: stats.clone(),
        };
        for (plan, stats) in plans.into_iter().zip(stats) {
            let (ready_tx, ready_rx) = mpsc::channel();
            let stop = stop.clone();
            let name = format!("wan {}", plan.direction);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let direction = plan.direction;
                    let sockets = open_direction(&plan);
                    let (rx, tx) = match sockets {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Err(e) = run(&rx, &tx, plan.params, plan.seed, &stop, &stats) {
                        eprintln!("p2p-wan: forwarder {direction} stopped: {e:#}");
                    }
                })
                .context("cannot start a forwarder thread")?;
            forwarder.threads.push(thread);
            ready_rx
                .recv()
                .map_err(|_| anyhow!("forwarder thread ended before it was ready"))??;
        }
        Ok(forwarder)
    }

    /// Stops and joins both threads; the final counters.
    pub fn stop(mut self) -> [DirectionStats; 2] {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    pub fn stats(&self) -> [DirectionStats; 2] {
        let read = |s: &Arc<Mutex<DirectionStats>>| match s.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        [read(&self.stats[0]), read(&self.stats[1])]
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.halt();
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// An AF_PACKET raw socket bound to interface `ifname` of the calling thread's
/// namespace. `protocol` ETH_P_ALL receives every frame; 0 receives none (send only).
fn packet_socket(ifname: &str, protocol: u16, nonblocking: bool) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!(
            "no interface {ifname}: {}",
            io::Error::last_os_error()
        )));
    }
    let mut flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        flags |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_PACKET, flags, libc::c_int::from(protocol.to_be())) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = index as libc::c_int;
    // SAFETY: a pointer to a live sockaddr_ll and its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

fn open_direction(plan: &Plan) -> Result<(OwnedFd, OwnedFd)> {
    netns::enter(&plan.wire)
        .with_context(|| format!("cannot enter network namespace {}", plan.wire))?;
    // Wake-ups within a microsecond of the deadline rather than the default 50 µs.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let rx = packet_socket(&plan.from, libc::ETH_P_ALL as u16, true)
        .with_context(|| format!("cannot open a packet socket on {}", plan.from))?;
    // Frames this process sends out of the interface are not read back (the
    // PACKET_OUTGOING check in `run` stays as a second line).
    let _ = set_int_opt(
        rx.as_raw_fd(),
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        1,
    );
    if set_int_opt(
        rx.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        RCVBUF,
    )
    .is_err()
    {
        let _ = set_int_opt(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }
    let tx = packet_socket(&plan.to, 0, false)
        .with_context(|| format!("cannot open a packet socket on {}", plan.to))?;
    if set_int_opt(
        tx.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SNDBUF,
    )
    .is_err()
    {
        let _ = set_int_opt(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
    }
    Ok((rx, tx))
}

/// Buffers for one recvmmsg call.
struct RecvBatch {
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_ll>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            // Zeroed pages are only backed once written: frames touch the first 1.5 KiB.
            buffers: vec![0; BATCH * SLOT],
            // SAFETY: plain old data.
            addresses: vec![unsafe { zeroed() }; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            // SAFETY: plain old data.
            headers: vec![unsafe { zeroed() }; BATCH],
        }
    }

    /// Reads up to BATCH frames without blocking; returns how many.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.iovecs.clear();
        for chunk in self.buffers.chunks_exact_mut(SLOT) {
            self.iovecs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: SLOT,
            });
        }
        for (i, header) in self.headers.iter_mut().enumerate() {
            // SAFETY: plain old data.
            *header = unsafe { zeroed() };
            header.msg_hdr.msg_name = (&mut self.addresses[i] as *mut libc::sockaddr_ll).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(error),
            };
        }
        Ok(n as usize)
    }

    /// Frame `i` of the last call: (packet type, received length, truncated, bytes).
    fn frame(&self, i: usize) -> (u8, usize, bool, &[u8]) {
        let header = &self.headers[i];
        let len = header.msg_len as usize;
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > SLOT;
        let start = i * SLOT;
        let data = &self.buffers[start..start + len.min(SLOT)];
        (self.addresses[i].sll_pkttype, len, truncated, data)
    }
}

/// Frames the kernel dropped on `fd` since the last call (PACKET_STATISTICS resets).
fn socket_drops(fd: RawFd) -> u64 {
    // SAFETY: plain old data.
    let mut stats: libc::tpacket_stats = unsafe { zeroed() };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: a pointer to a live tpacket_stats and its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(stats.tp_drops)
    } else {
        0
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timespec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one live pollfd, a live timespec, no signal mask.
    let rc = unsafe { libc::ppoll(&mut pollfd, 1, &timespec, std::ptr::null()) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    Ok(rc > 0 && pollfd.revents & libc::POLLIN != 0)
}

/// The forwarding loop of one direction, until `stop`.
fn run(
    rx: &OwnedFd,
    tx: &OwnedFd,
    params: LinkParams,
    seed: u64,
    stop: &AtomicBool,
    shared: &Mutex<DirectionStats>,
) -> Result<()> {
    let base = Instant::now();
    let now = || base.elapsed().as_nanos() as Nanos;
    let mut link: Link<Vec<u8>> = Link::new(params, seed);
    let mut batch = RecvBatch::new();
    let mut local = match shared.lock() {
        Ok(guard) => *guard,
        Err(poisoned) => *poisoned.into_inner(),
    };
    let max_frame = crate::profile::MAX_FRAME as usize;
    let mut last_drop_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Deliver what is due.
        let t = now();
        while let Some(frame) = link.pop_due(t) {
            // SAFETY: a live buffer and its length; tx is bound to its interface.
            let sent = unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if sent < 0 {
                local.send_errors += 1;
            }
        }
        let timeout = match link.next_delivery() {
            Some(due) => Duration::from_nanos(due.saturating_sub(now())).min(MAX_WAIT),
            None => MAX_WAIT,
        };
        if wait_readable(rx.as_raw_fd(), timeout)? {
            // A few batches at most, then deliver again.
            for _ in 0..4 {
                let n = batch.receive(rx.as_raw_fd())?;
                let t = now();
                for i in 0..n {
                    let (pkttype, len, truncated, data) = batch.frame(i);
                    if pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    if truncated || len > max_frame {
                        local.oversize_frames += 1;
                        continue;
                    }
                    link.arrive(t, len, data.to_vec());
                }
                if n < BATCH {
                    break;
                }
            }
        }
        if last_drop_check.elapsed() >= Duration::from_millis(100) {
            local.socket_drops += socket_drops(rx.as_raw_fd());
            last_drop_check = Instant::now();
        }
        local.link = link.stats();
        match shared.lock() {
            Ok(mut guard) => *guard = local,
            Err(poisoned) => *poisoned.into_inner() = local,
        }
    }
    local.socket_drops += socket_drops(rx.as_raw_fd());
    local.link = link.stats();
    match shared.lock() {
        Ok(mut guard) => *guard = local,
        Err(poisoned) => *poisoned.into_inner() = local,
    }
    Ok(())
}
