//! The S3 API of a gateway, driven by real S3 clients over real sockets: boto3 (the whole
//! operation suite in tests/s3/s3_suite.py: buckets, objects, ranges, conditions, listings,
//! copies, tags, multipart, SigV4 failures, presigned URLs, aws-chunked uploads, virtual hosts,
//! malformed and interrupted requests), s3cmd and rclone unchanged, and S3/FUSE cross-checks on
//! the one namespace. Fails (does not skip) when a client is missing: scripts/test.sh installs
//! them.

use anyhow::{ensure, Context, Result};
use cairn_tests::{bounded, run_cmd, serial, start_fs_cluster, ClusterOpts, ProcCluster, S3Key};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn suite_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("s3/s3_suite.py")
}

fn require(cmd: &str, args: &[&str], package: &str) {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{cmd} is missing or broken: the S3 tests need {package} (scripts/test.sh installs it)"
    );
}

struct S3Env {
    port: u16,
    admin: S3Key,
    alice: S3Key,
    bob: S3Key,
}

fn s3_env(c: &ProcCluster, port: u16) -> Result<S3Env> {
    Ok(S3Env {
        port,
        admin: c.s3_user("root", true)?,
        alice: c.s3_user("alice", false)?,
        bob: c.s3_user("bob", false)?,
    })
}

fn python(env: &S3Env) -> Command {
    let mut cmd = Command::new("python3");
    cmd.env(
        "CAIRN_S3_ENDPOINT",
        format!("http://127.0.0.1:{}", env.port),
    );
    for (who, k) in [
        ("ADMIN", &env.admin),
        ("ALICE", &env.alice),
        ("BOB", &env.bob),
    ] {
        cmd.env(format!("CAIRN_S3_{who}_AK"), &k.access_key);
        cmd.env(format!("CAIRN_S3_{who}_SK"), &k.secret);
    }
    cmd
}

#[test]
fn boto3_drives_every_operation() {
    require("python3", &["-c", "import boto3"], "python3 with boto3");
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let (_gw, port) = c.s3_gateway("s3gw", &[]).expect("s3 gateway");
    let env = s3_env(&c, port).expect("users");
    let out = bounded(600, move || {
        let out = python(&env)
            .arg(suite_path())
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(out)
    })
    .expect("boto3 suite ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "boto3 suite failed:\n{text}");
    // The suite really ran its cases (a broken import would run none).
    assert!(
        text.contains("boto3 suite: ") && !text.contains(" 0 run"),
        "{text}"
    );
}

fn s3cmd(cfg: &Path, args: &[&str]) -> Result<String> {
    run_cmd(Command::new("s3cmd").arg("-c").arg(cfg).args(args))
}

#[test]
fn s3cmd_and_rclone_work_unchanged() {
    require("s3cmd", &["--version"], "s3cmd");
    require("rclone", &["version"], "rclone");
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let (_gw, port) = c.s3_gateway("s3gw", &[]).expect("s3 gateway");
    let key = c.s3_user("carol", false).expect("user");
    let dir = c.dir.path().join("clients");
    bounded(600, move || {
        fs::create_dir_all(dir.join("up/sub"))?;
        let cfg = dir.join("s3cfg");
        fs::write(
            &cfg,
            format!(
                "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = 127.0.0.1:{port}\nhost_bucket = 127.0.0.1:{port}\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
                key.access_key, key.secret
            ),
        )?;
        // s3cmd: bucket, put (single and multipart), ls, get, info, del, rb.
        s3cmd(&cfg, &["mb", "s3://carol-bucket"])?;
        let small: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let big: Vec<u8> = (0..13 * 1024 * 1024u32).map(|i| (i * 7 % 253) as u8).collect();
        fs::write(dir.join("up/small.bin"), &small)?;
        fs::write(dir.join("up/sub/big.bin"), &big)?;
        s3cmd(&cfg, &["put", dir.join("up/small.bin").to_str().unwrap(), "s3://carol-bucket/s/small.bin"])?;
        s3cmd(
            &cfg,
            &["put", "--multipart-chunk-size-mb=5", dir.join("up/sub/big.bin").to_str().unwrap(), "s3://carol-bucket/big.bin"],
        )?;
        let ls = s3cmd(&cfg, &["ls", "-r", "s3://carol-bucket"])?;
        ensure!(ls.contains("s3://carol-bucket/s/small.bin") && ls.contains("s3://carol-bucket/big.bin"), "s3cmd ls: {ls}");
        let got = dir.join("got.bin");
        s3cmd(&cfg, &["get", "--force", "s3://carol-bucket/big.bin", got.to_str().unwrap()])?;
        ensure!(fs::read(&got)? == big, "s3cmd get returned other bytes");
        let info = s3cmd(&cfg, &["info", "s3://carol-bucket/s/small.bin"])?;
        ensure!(info.contains("100000"), "s3cmd info: {info}");
        s3cmd(&cfg, &["del", "s3://carol-bucket/s/small.bin", "s3://carol-bucket/big.bin"])?;
        s3cmd(&cfg, &["rb", "s3://carol-bucket"])?;
        let buckets = s3cmd(&cfg, &["ls"])?;
        ensure!(!buckets.contains("carol-bucket"), "bucket still listed: {buckets}");

        // rclone: copy a tree, check it by size and MD5, sync a deletion, read back.
        let rclone = |args: &[&str]| {
            run_cmd(
                Command::new("rclone")
                    .args(args)
                    // rclone's S3 client refuses a CA bundle on a plain-HTTP endpoint.
                    .env_remove("AWS_CA_BUNDLE")
                    .env("RCLONE_CONFIG", "/dev/null")
                    .env("RCLONE_CONFIG_CAIRN_TYPE", "s3")
                    .env("RCLONE_CONFIG_CAIRN_PROVIDER", "Other")
                    .env("RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID", &key.access_key)
                    .env("RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY", &key.secret)
                    .env("RCLONE_CONFIG_CAIRN_ENDPOINT", format!("http://127.0.0.1:{port}"))
                    .env("RCLONE_CONFIG_CAIRN_REGION", "us-east-1")
                    .env("RCLONE_CONFIG_CAIRN_FORCE_PATH_STYLE", "true"),
            )
        };
        let up = dir.join("up");
        let up = up.to_str().unwrap();
        rclone(&["mkdir", "cairn:rclone-bucket"])?;
        rclone(&["copy", up, "cairn:rclone-bucket/tree"])?;
        rclone(&["check", up, "cairn:rclone-bucket/tree"])?;
        let lsf = rclone(&["lsf", "-R", "cairn:rclone-bucket"])?;
        ensure!(lsf.contains("tree/sub/big.bin") && lsf.contains("tree/small.bin"), "rclone lsf: {lsf}");
        fs::remove_file(dir.join("up/small.bin"))?;
        rclone(&["sync", up, "cairn:rclone-bucket/tree"])?;
        let lsf = rclone(&["lsf", "-R", "cairn:rclone-bucket"])?;
        ensure!(!lsf.contains("small.bin"), "rclone sync left a deleted file: {lsf}");
        let back = dir.join("back");
        rclone(&["copy", "cairn:rclone-bucket/tree", back.to_str().unwrap()])?;
        ensure!(fs::read(back.join("sub/big.bin"))? == big, "rclone read back other bytes");
        Ok(())
    })
    .expect("s3cmd and rclone");
}

#[test]
fn s3_and_fuse_see_one_namespace() {
    require("python3", &["-c", "import boto3"], "python3 with boto3");
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let (_gw, port) = c.s3_gateway("s3gw", &[]).expect("s3 gateway");
    let env = s3_env(&c, port).expect("users");
    let m = c.mount("m", &[]).expect("mount");
    let root = m.dir.clone();
    let scratch = c.dir.path().join("scratch");
    bounded(300, move || {
        fs::create_dir_all(&scratch)?;
        let py = |script: &str| -> Result<String> {
            let out = python(&env).arg("-c").arg(format!(
                "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['CAIRN_S3_ENDPOINT'], aws_access_key_id=os.environ['CAIRN_S3_ALICE_AK'], aws_secret_access_key=os.environ['CAIRN_S3_ALICE_SK'], region_name='us-east-1')\n{script}"
            ))
            .output()?;
            ensure!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        // S3 → FUSE: a bucket is a top-level directory, a key a path under it.
        py("s3.create_bucket(Bucket='shared')\ns3.put_object(Bucket='shared', Key='docs/2026/report.txt', Body=b'written by S3' * 1000)")?;
        let via_fuse = fs::read(root.join("shared/docs/2026/report.txt")).context("read through FUSE")?;
        ensure!(via_fuse == b"written by S3".repeat(1000), "FUSE reads other bytes");
        // FUSE → S3: a file written through the mount is an object, listed and readable.
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 249) as u8).collect();
        fs::create_dir_all(root.join("shared/from-fuse"))?;
        fs::write(root.join("shared/from-fuse/data.bin"), &data)?;
        let got = scratch.join("got.bin");
        py(&format!("s3.download_file('shared', 'from-fuse/data.bin', '{}')", got.display()))?;
        ensure!(fs::read(&got)? == data, "S3 reads other bytes than FUSE wrote");
        let keys = py("print(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='shared')['Contents']))")?;
        ensure!(keys == "['docs/2026/report.txt', 'from-fuse/data.bin']", "listing: {keys}");
        // An S3-written object keeps its MD5 ETag; once FUSE rewrites it, the ETag changes
        // (and is no longer an MD5), so no client trusts a stale checksum.
        let e1 = py("print(s3.head_object(Bucket='shared', Key='docs/2026/report.txt')['ETag'])")?;
        ensure!(!e1.contains('-') && e1.len() == 34, "S3 ETag {e1}");
        fs::write(root.join("shared/docs/2026/report.txt"), b"rewritten by FUSE")?;
        let e2 = py("print(s3.head_object(Bucket='shared', Key='docs/2026/report.txt')['ETag'])")?;
        ensure!(e2 != e1 && e2.contains('-'), "ETag after a FUSE write: {e1} -> {e2}");
        let body = py("print(s3.get_object(Bucket='shared', Key='docs/2026/report.txt')['Body'].read().decode())")?;
        ensure!(body == "rewritten by FUSE", "S3 reads {body:?}");
        // Deleting through S3 removes the file (and the emptied directories) from the mount.
        py("s3.delete_object(Bucket='shared', Key='docs/2026/report.txt')")?;
        // The mount may keep a name it looked up for its entry TTL (1 s) before it asks again.
        let gone = std::time::Instant::now();
        while root.join("shared/docs").exists() {
            ensure!(
                gone.elapsed() < std::time::Duration::from_secs(3),
                "emptied prefix still a directory 3 s after the delete"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // A directory made through FUSE at the top is a bucket of nobody's: only
        // administrators reach it over S3.
        fs::create_dir(root.join("fuse-made"))?;
        let denied = py("import botocore\ntry:\n    s3.list_objects_v2(Bucket='fuse-made')\n    print('allowed')\nexcept botocore.exceptions.ClientError as e:\n    print(e.response['Error']['Code'])")?;
        ensure!(denied == "AccessDenied", "alice on a FUSE-made bucket: {denied}");
        Ok(())
    })
    .expect("S3 and FUSE cross-check");
}

#[test]
fn s3_over_tls() {
    require("python3", &["-c", "import boto3"], "python3 with boto3");
    require("openssl", &["version"], "openssl");
    let _s = serial();
    let (_rt, c) = start_fs_cluster(ClusterOpts::default()).expect("cluster");
    let dir = c.dir.path().join("tls");
    fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_cmd(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .expect("make a certificate");
    let (_gw, port) = c
        .s3_gateway(
            "s3tls",
            &[
                "--s3-tls-cert",
                cert.to_str().unwrap(),
                "--s3-tls-key",
                key.to_str().unwrap(),
            ],
        )
        .expect("TLS gateway");
    let env = s3_env(&c, port).expect("users");
    bounded(120, move || {
        let script = format!(
            "import boto3, os\n\
             s3 = boto3.client('s3', endpoint_url='https://127.0.0.1:{port}', verify='{}', aws_access_key_id=os.environ['CAIRN_S3_ALICE_AK'], aws_secret_access_key=os.environ['CAIRN_S3_ALICE_SK'], region_name='us-east-1')\n\
             s3.create_bucket(Bucket='secure')\n\
             s3.put_object(Bucket='secure', Key='k', Body=b'over tls')\n\
             print(s3.get_object(Bucket='secure', Key='k')['Body'].read().decode())",
            cert.display()
        );
        let out = python(&env).arg("-c").arg(script).output()?;
        ensure!(
            out.status.success(),
            "boto3 over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(String::from_utf8_lossy(&out.stdout).trim() == "over tls");
        // Plain HTTP to the TLS port gets no S3 answer.
        let plain = python(&env)
            .arg("-c")
            .arg(format!(
                "import urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=10)\n    print('answered')\nexcept Exception as e:\n    print('refused')"
            ))
            .output()?;
        ensure!(String::from_utf8_lossy(&plain.stdout).trim() == "refused");
        Ok(())
    })
    .expect("S3 over TLS");
}
