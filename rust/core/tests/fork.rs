//! A runtime loaded before `fork` predicts in the child (which inherits the thread pool without its
//! threads) and still in the parent. Its own test binary: one test, so that no other test's thread
//! is running when the process forks.

#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::{texts, Model, Spec};
use tinyfast_core::{Input, Runtime, RuntimeOptions};

/// Waits for `pid` at most `limit` and returns its exit code; kills it and fails on a hang.
fn wait_within(pid: libc::pid_t, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer to the status.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(done >= 0, "waitpid failed");
        if done == pid {
            assert!(libc::WIFEXITED(status), "the child died: status {status}");
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forked_child_predicts_like_the_parent() {
    let dir = Model::new(Spec::default()).write(true);
    let options = RuntimeOptions {
        threads: 3,
        kernel: None,
    };
    let rt = Runtime::load(dir.path(), options).unwrap();
    let texts = texts();
    let inputs: Vec<Input> = texts.iter().map(|t| Input::Single(t)).collect();
    let want = rt.predict(&inputs, 0.3, 4).unwrap();

    for _ in 0..2 {
        // SAFETY: the child only runs the runtime (whose pool it rebuilds) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let same = std::panic::catch_unwind(|| {
                rt.threads() == 3
                    && rt.predict(&inputs, 0.3, 4).ok().as_ref() == Some(&want)
                    && rt.tokenize(&inputs).is_ok()
                    && rt.predict(&inputs, 0.3, 1).ok().as_ref() == Some(&want)
            });
            // SAFETY: ends the child without running the test harness's exit code.
            unsafe { libc::_exit(if matches!(same, Ok(true)) { 0 } else { 1 }) };
        }
        assert_eq!(wait_within(pid, Duration::from_secs(60)), 0);
        // The parent's pool is untouched.
        assert_eq!(rt.predict(&inputs, 0.3, 4).unwrap(), want);
    }
}
