//! The wait before a reconnection, shown as it runs: on a terminal one line that counts
//! down each second ("… retrying in 4 s (attempt 3 of 10), Ctrl+C to stop"), otherwise
//! that line once.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows `what` (why we wait) and a countdown of `delay` on stderr, without blocking:
/// the line clears itself when the delay is over (the next attempt starts then).
/// `attempt` of `budget` (0 = no limit).
pub fn show(what: &str, delay: Duration, attempt: u32, budget: u32) {
    let what = what.to_owned();
    let of = if budget == 0 {
        String::new()
    } else {
        format!(" of {budget}")
    };
    let line = move |left: u64| {
        format!("{what} — retrying in {left} s (attempt {attempt}{of}), Ctrl+C to stop")
    };
    let secs = delay.as_secs().max(1);
    if !std::io::stderr().is_terminal() {
        eprintln!("{}", line(secs));
        return;
    }
    let bar = ProgressBar::with_draw_target(Some(secs), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(line(secs));
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        bar.finish();
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        for left in (1..secs).rev() {
            tick.tick().await;
            bar.set_message(line(left));
        }
        tick.tick().await;
        bar.finish_and_clear();
    });
}
