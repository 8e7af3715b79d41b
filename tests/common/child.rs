//! Running one test of this binary in a child process: for what a process does once (its start, its exit,
//! its environment), and under a hard timeout for what could hang.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that tells a test binary it runs as the child of [`run_child`].
pub const CHILD: &str = "HEAP_SAMPLER_TEST_CHILD";

/// Whether this process is the child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `test` of this binary in a child process (with `HEAP_SAMPLER_TEST_CHILD` set and output not
/// captured), under a hard timeout. On timeout, prints every thread's stack (gdb), kills the child and
/// panics. Returns the child's stdout and stderr; panics if it did not exit 0.
pub fn run_child(test: &str, timeout: Duration) -> (String, String) {
    run_child_with_env(test, &[], timeout)
}

/// As [`run_child`], with the variables `env` set in the child's environment (for what a process reads at
/// start).
pub fn run_child_with_env(test: &str, env: &[(&str, &str)], timeout: Duration) -> (String, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child test");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let stacks = Command::new("gdb")
                .args([
                    "-p",
                    &child.id().to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(gdb failed: {e})"));
            let _ = child.kill();
            let _ = child.wait();
            panic!("child test {test} hung for {timeout:?}; its threads:\n{stacks}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "child test {test} failed ({status}):\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}
