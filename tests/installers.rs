//! The installers behind `scripts/test.sh`, as a fresh machine runs them: an empty cache and
//! several at once (test binaries run in parallel, and each may ask for the same tool). Every
//! `ensure-*` script started three at a time into one empty cache must succeed every time, print
//! the same answer, and leave a tool that works. They fetch from PyPI, npm and Debian's archive,
//! as on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `script` three times at once with `cache` as its cache; their outputs.
fn three_at_once(script: &str, cache: &Path) -> Vec<Output> {
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(root().join(script))
                .env("FP_RELAY_CACHE_DIR", cache)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{script} starts: {e}"))
        })
        .collect();
    children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect()
}

/// The one answer the three runs agreed on, after checking each succeeded.
fn agreed(script: &str, outputs: &[Output]) -> Vec<String> {
    for (n, output) in outputs.iter().enumerate() {
        assert!(
            output.status.success(),
            "{script} run {n} of 3 failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answers: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8(o.stdout.clone()).unwrap())
        .collect();
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "{script} printed different answers: {answers:?}"
    );
    answers[0].lines().map(str::to_owned).collect()
}

fn runs(program: impl AsRef<Path>, args: &[&str]) {
    let program = program.as_ref();
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_installer_succeeds_three_at_a_time_on_an_empty_cache() {
    let cache = std::env::temp_dir().join(format!("fp-relay-cache-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&cache).unwrap();
    // Each script's three runs overlap each other, and all five scripts run at once, as test
    // binaries would start them.
    let scripts: [&'static str; 5] = [
        "scripts/ensure-tansu.sh",
        "scripts/ensure-kubernetes-validate.sh",
        "scripts/ensure-prometheus.sh",
        "scripts/ensure-examples.sh",
        "benches/ensure-peer.sh",
    ];
    let handles: Vec<_> = scripts
        .into_iter()
        .map(|script| {
            let cache = cache.clone();
            std::thread::spawn(move || (script, three_at_once(script, &cache)))
        })
        .collect();
    let mut answers = std::collections::HashMap::new();
    for handle in handles {
        let (script, outputs) = handle.join().unwrap();
        answers.insert(script, agreed(script, &outputs));
    }

    runs(&answers["scripts/ensure-tansu.sh"][0], &["--version"]);
    let k8s = PathBuf::from(&answers["scripts/ensure-kubernetes-validate.sh"][0]);
    runs(k8s.join("kubernetes-validate"), &["--version"]);
    let prometheus = PathBuf::from(&answers["scripts/ensure-prometheus.sh"][0]);
    // A machine with Prometheus installed answers its own directory instead of the cache's.
    runs(prometheus.join("promtool"), &["--version"]);
    let examples = &answers["scripts/ensure-examples.sh"];
    runs(&examples[0], &["-c", "import confluent_kafka"]);
    assert!(
        Path::new(&examples[1])
            .join("kafkajs/package.json")
            .is_file(),
        "{examples:?}"
    );
    runs(
        &answers["benches/ensure-peer.sh"][0],
        &["-c", "import aiohttp, confluent_kafka"],
    );
    // Nothing half-made is left beside the results.
    let tansu = cache.join("tansu-0.6.0");
    let leftovers: Vec<_> = [&cache, &tansu]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".work") || name.starts_with(".prometheus"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&cache);
}
