//! `cairn server`: one command, a whole cluster; Ctrl-C stops it cleanly and a restart with the
//! same directory finds every object again.

use cairn_tests::{cairn_bin, free_port, free_port_run, send_signal};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    meta: String,
    out: Vec<String>,
}

fn start(dir: &std::path::Path, ports: (u16, u16, u16)) -> Server {
    let mut child = Command::new(cairn_bin())
        .args(["server", "--data"])
        .arg(dir)
        .args([
            "--meta-port",
            &ports.0.to_string(),
            "--osd-port",
            &ports.1.to_string(),
        ])
        .args([
            "--iscsi-port",
            &ports.2.to_string(),
            "--nfs-port",
            &free_port().to_string(),
            "--s3-port",
            &free_port().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("server-stderr.log"))
                .expect("server log"),
        ))
        .spawn()
        .expect("spawn cairn server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let start = Instant::now();
    while !out.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => out.push(l),
            Err(_) => {
                if let Ok(Some(st)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(dir.join("server-stderr.log")).unwrap_or_default();
                    let from = (log.len().saturating_sub(3000)..log.len())
                        .find(|&i| log.is_char_boundary(i))
                        .unwrap_or(0);
                    panic!(
                        "cairn server exited early ({st}): {out:?}\n{}",
                        &log[from..]
                    );
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no endpoints printed: {out:?}"
        );
    }
    Server {
        child,
        meta: format!("127.0.0.1:{}", ports.0),
        out,
    }
}

fn cli(meta: &str, args: &[&str]) -> String {
    let o = Command::new(cairn_bin())
        .args(args)
        .env("CAIRN_META", meta)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stop(mut s: Server) {
    send_signal(s.child.id(), libc::SIGINT);
    let start = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "cairn server did not stop cleanly: {st}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "cairn server ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_command_cluster_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Consecutive free ports for the three replicas and the three OSDs.
    let ports = (free_port_run(3), free_port_run(3), free_port());
    let s = start(dir.path(), ports);
    let text = s.out.join("\n");
    for want in [
        "metadata",
        "osd.0",
        "osd.1",
        "osd.2",
        "iscsi://",
        "nfs://",
        "s3        http://",
        "access key",
        "pool      default",
    ] {
        assert!(
            text.contains(want),
            "endpoint {want:?} not printed:\n{text}"
        );
    }
    let src = dir.path().join("file.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    cli(&s.meta, &["obj", "put", "keepme", src.to_str().unwrap()]);
    let status = cli(&s.meta, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["map"]["meta_members"].as_object().unwrap().len(), 3);
    assert_eq!(v["map"]["osds"].as_object().unwrap().len(), 3);
    let s3_line = |text: &str| {
        text.lines()
            .find(|l| l.contains("access key"))
            .map(|l| l.split("(user").nth(1).unwrap_or_default().to_string())
    };
    let creds = s3_line(&text);
    stop(s);

    let s = start(dir.path(), ports);
    // The S3 admin credentials are made once and stay the same across restarts.
    assert_eq!(s3_line(&s.out.join("\n")), creds);
    let dst = dir.path().join("back.bin");
    cli(
        &s.meta,
        &["obj", "get", "keepme", "-o", dst.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "object changed across a restart"
    );
    stop(s);
}
