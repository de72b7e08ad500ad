//! Load test for the rendezvous server: N clients each hold a waiting mailbox, then a
//! sample of them is paired and exchanges a message each way; the server's peak RSS
//! (VmHWM) and CPU time are reported.
//!
//! ```text
//! cargo build --release -p p2p-core --example rendezvous_load
//! target/release/examples/rendezvous_load load --mailboxes 10000 --pairs 1000
//! ```
//!
//! `load` starts the server as a child process (`rendezvous_load serve 127.0.0.1:0`,
//! a tokio current_thread runtime) pinned to core 0 with `taskset -c 0`, and runs the
//! clients in this process (pin it elsewhere with `taskset -c 1`). Everything runs on
//! loopback; every loop is bounded by the counts given.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p2p_core::rendezvous::{Limits, Mailbox, Server, ServerConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    raise_fd_limit();
    match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).map_or("127.0.0.1:0", String::as_str)),
        Some("load") => load(&args[1..]),
        _ => {
            eprintln!(
                "usage: rendezvous_load serve [ADDR]\n       rendezvous_load load \
                 [--mailboxes N] [--pairs M] [--no-pin]"
            );
            std::process::exit(2);
        }
    }
}

/// The server alone, on one thread, with the per-address limit lifted (every client
/// comes from 127.0.0.1).
fn serve(listen: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = Server::bind(ServerConfig {
            listen: listen.parse().expect("ADDR is ip:port"),
            turn: None,
            limits: Limits {
                per_ip: usize::MAX,
                ..Limits::default()
            },
        })
        .await
        .expect("bind");
        println!("listening on {}", server.local_addr());
        server.run().await.expect("serve");
    });
}

fn load(args: &[String]) {
    let mut mailboxes = 10_000usize;
    let mut pairs = 1_000usize;
    let mut pin = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the flag")
        };
        match arg.as_str() {
            "--mailboxes" => mailboxes = number(),
            "--pairs" => pairs = number(),
            "--no-pin" => pin = false,
            other => panic!("unknown argument {other}"),
        }
    }
    let pairs = pairs.min(mailboxes);

    let me = std::env::current_exe().expect("own path");
    let mut command = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&me);
        c
    } else {
        Command::new(&me)
    };
    let mut child = command
        .args(["serve", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's first line");
    let server = line
        .trim()
        .strip_prefix("listening on ")
        .expect("'listening on ADDR'")
        .to_owned();
    println!(
        "server pid {pid} on {server}{}",
        if pin { ", pinned to core 0" } else { "" }
    );
    println!("server at start: {}", memory(pid));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Open the waiting mailboxes, at most 256 connecting at a time.
        let started = Instant::now();
        let mut waiting: Vec<(Mailbox, u32)> = Vec::with_capacity(mailboxes);
        let mut batch = tokio::task::JoinSet::new();
        let mut launched = 0;
        while waiting.len() < mailboxes {
            while launched < mailboxes && batch.len() < 256 {
                let server = server.clone();
                batch.spawn(async move { Mailbox::allocate(&server).await });
                launched += 1;
            }
            let opened = batch.join_next().await.expect("a task").expect("no panic");
            waiting.push(opened.expect("allocate"));
        }
        let opened_in = started.elapsed();
        let mut nameplates: Vec<u32> = waiting.iter().map(|(_, n)| *n).collect();
        nameplates.sort_unstable();
        nameplates.dedup();
        assert_eq!(
            nameplates.len(),
            mailboxes,
            "every mailbox has its own nameplate"
        );
        println!(
            "{mailboxes} waiting mailboxes opened in {:.2}s (nameplates 1..={})",
            opened_in.as_secs_f64(),
            nameplates.last().copied().unwrap_or(0)
        );
        println!("server with {mailboxes} waiting: {}", memory(pid));

        // Pair a sample, each pair exchanging one message each way, all at once.
        let started = Instant::now();
        let mut sample = tokio::task::JoinSet::new();
        for (mut a, nameplate) in waiting.drain(..pairs) {
            let server = server.clone();
            sample.spawn(async move {
                let begin = Instant::now();
                let mut b = Mailbox::claim(&server, nameplate).await?;
                a.send(b"spake2 from the sender").await?;
                let got = b.recv().await?;
                assert_eq!(got, b"spake2 from the sender");
                b.send(b"spake2 from the receiver").await?;
                let got = a.recv().await?;
                assert_eq!(got, b"spake2 from the receiver");
                Ok::<_, p2p_core::rendezvous::RendezvousError>(begin.elapsed())
            });
        }
        let mut latencies = Vec::with_capacity(pairs);
        while let Some(done) = sample.join_next().await {
            latencies.push(done.expect("no panic").expect("pair"));
        }
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{pairs} pairs claimed and exchanged a message each way in {:.2}s (per pair: \
             median {:.1?}, p99 {:.1?}, max {:.1?}) while {} mailboxes kept waiting",
            started.elapsed().as_secs_f64(),
            pct(0.5),
            pct(0.99),
            pct(1.0),
            waiting.len()
        );
        println!("server at the end: {}", memory(pid));
        drop(waiting);
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// VmRSS, VmHWM and CPU time of `pid`, from /proc.
fn memory(pid: u32) -> String {
    // Let the server settle what it is doing.
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15; the command name (field 2) has no spaces here.
    let ticks: u64 = stat
        .split_whitespace()
        .skip(13)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    format!(
        "VmRSS {}, VmHWM {}, CPU {:.2}s",
        field("VmRSS:"),
        field("VmHWM:"),
        ticks as f64 / 100.0
    )
}

/// Lifts the soft open-file limit to the hard one: 10,000 sockets need more than the
/// usual 1,024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
