//! The deploy artefacts as written: the Dockerfile copies everything the build needs, the
//! image's user is one Kubernetes can check, its configuration holds the listen addresses, and
//! the manifests are valid Kubernetes objects (kubernetes-validate bundles the schemas;
//! scripts/test.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use fp_relay::config::{Config, Overrides};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap()
}

/// The `COPY <source> <destination>` lines of the build stage (the first `FROM`'s).
fn build_stage_copies(dockerfile: &str) -> Vec<(String, String)> {
    dockerfile
        .split("\nFROM ")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let (destination, sources) = parts.split_last().unwrap();
            sources
                .iter()
                .map(|source| (source.to_string(), destination.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Resolves the crate, offline and locked, from exactly what the Dockerfile's build stage
/// copies: a missing COPY (vendor/ was) fails here instead of in `docker build`.
#[test]
fn the_dockerfile_copies_everything_the_build_needs() {
    let context = std::env::temp_dir().join(format!("fp-relay-docker-{}", uuid::Uuid::new_v4()));
    for (source, destination) in build_stage_copies(&dockerfile()) {
        let target = if destination == "./" {
            context.join(&source)
        } else {
            context.join(destination.trim_start_matches("./"))
        };
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        copy_tree(&root().join(&source), &target);
    }
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(&context)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo cannot resolve the crate from the Dockerfile's COPY lines: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Targets cargo metadata does not open: every path Cargo.toml names must be there too.
    let manifest: toml::Table = std::fs::read_to_string(context.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    for section in ["bin", "bench"] {
        for target in manifest[section].as_array().unwrap() {
            let path = target
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("benches/{}.rs", target["name"].as_str().unwrap()));
            assert!(context.join(&path).exists(), "{path} is not copied");
        }
    }
    let _ = std::fs::remove_dir_all(context);
}

/// The kubelet verifies `runAsNonRoot` only against a numeric user ("image has non-numeric
/// user" otherwise), and the manifests that set it name the same user.
#[test]
fn the_image_runs_as_a_numeric_non_root_user_the_manifests_agree_with() {
    let dockerfile = dockerfile();
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert!(uid > 0 && gid > 0, "USER {user} is not root");
    for manifest in ["gateway-spool.yaml", "spool-drain-job.yaml"] {
        let text =
            std::fs::read_to_string(root().join("deploy/kubernetes").join(manifest)).unwrap();
        assert!(text.contains(&format!("runAsUser: {uid}")), "{manifest}");
        assert!(text.contains(&format!("fsGroup: {gid}")), "{manifest}");
    }
}

/// The image's listen addresses live in its configuration file only, so a ConfigMap mounted
/// over /etc/fp-relay replaces them (environment variables in the image used to win over it).
#[test]
fn the_image_configuration_holds_the_listen_addresses_and_nothing_overrides_them() {
    let dockerfile = dockerfile();
    assert!(
        !dockerfile.contains("_LISTEN"),
        "no listen address in the image's environment"
    );
    assert!(dockerfile.contains("COPY deploy/container.toml /etc/fp-relay/relay.toml"));
    let overrides = Overrides {
        insecure_no_auth: true,
        ..Overrides::default()
    };
    let config = Config::load(
        Some(&root().join("deploy/container.toml")),
        std::iter::empty(),
        &overrides,
    )
    .unwrap();
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin.listen.to_string(), "0.0.0.0:9090");
}

/// Every manifest is a valid object of its kind (the Prometheus operator's ServiceMonitor is a
/// custom resource without a bundled schema, and is only warned about).
#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap_or_else(|error| {
            panic!("kubernetes-validate not found ({error}): scripts/test.sh installs it")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    for kind in ["statefulset", "deployment", "job", "service", "configmap"] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{kind}: {report}"
        );
    }
}
