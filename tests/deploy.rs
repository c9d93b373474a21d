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
    // Only this platform's packages: a fresh machine's registry cache holds what `cargo build`
    // fetched here, not the Windows-only crates the lock file also names.
    let host = Command::new("rustc").arg("-vV").output().unwrap().stdout;
    let host = String::from_utf8(host).unwrap();
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", host])
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

fn manifests() -> Vec<PathBuf> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    manifests
}

/// The oldest Kubernetes the manifests say they need (the preStop `sleep` action), and the
/// newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Every manifest, on its own, is a valid set of objects of their kinds for every Kubernetes
/// version it claims (the Prometheus operator's ServiceMonitor is a custom resource without a
/// bundled schema, and is only warned about).
#[test]
fn each_kubernetes_manifest_validates_alone_against_the_schemas() {
    let mut report = String::new();
    for manifest in manifests() {
        for version in KUBERNETES_VERSIONS {
            let output = Command::new("kubernetes-validate")
                .args(["--strict", "-k", version])
                .arg(&manifest)
                .output()
                .unwrap_or_else(|error| {
                    panic!("kubernetes-validate not found ({error}): scripts/test.sh installs it")
                });
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success() && !text.contains("ERROR"),
                "{} against {version}: {text}",
                manifest.display()
            );
            report.push_str(&text);
        }
    }
    for kind in [
        "statefulset",
        "deployment",
        "job",
        "service",
        "configmap",
        "networkpolicy",
        "poddisruptionbudget",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{kind}: {report}"
        );
    }
}

/// The objects of one manifest file.
struct Manifest {
    file: String,
    text: String,
    objects: Vec<serde_yaml::Value>,
}

impl Manifest {
    fn read(file: &str) -> Self {
        let text = std::fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
        let objects = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
            .filter(|o: &serde_yaml::Value| !o.is_null())
            .collect();
        Self {
            file: file.to_owned(),
            text,
            objects,
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&serde_yaml::Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn names(&self, kind: &str) -> Vec<String> {
        self.of_kind(kind)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// (workload name, its pod template) for every Deployment, StatefulSet and Job.
    fn pod_templates(&self) -> Vec<(String, &serde_yaml::Value)> {
        ["Deployment", "StatefulSet", "Job"]
            .iter()
            .flat_map(|kind| self.of_kind(kind))
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                    &o["spec"]["template"],
                )
            })
            .collect()
    }

    /// True when some pod template of this file carries every label of `selector`.
    fn selects_a_pod(&self, selector: &serde_yaml::Value) -> bool {
        let wanted = selector.as_mapping().expect("a selector");
        !wanted.is_empty()
            && self.pod_templates().iter().any(|(_, template)| {
                wanted
                    .iter()
                    .all(|(k, v)| template["metadata"]["labels"][k.as_str().unwrap()] == *v)
            })
    }

    /// The Secrets and keys the file's comments say how to create
    /// (`kubectl create secret generic NAME --from-literal=KEY=...`).
    fn documented_secrets(&self) -> Vec<(String, Vec<String>)> {
        let comments: String = self
            .text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .map(|l| l.trim_end().trim_end_matches('\\'))
            .collect::<Vec<_>>()
            .join(" ");
        comments
            .split("kubectl create secret generic ")
            .skip(1)
            .map(|command| {
                let command = command.split("kubectl ").next().unwrap();
                let name = command.split_whitespace().next().unwrap().to_owned();
                let keys = command
                    .split("--from-literal=")
                    .skip(1)
                    .map(|kv| kv.split('=').next().unwrap().to_owned())
                    .collect();
                (name, keys)
            })
            .collect()
    }
}

/// Every value under `value` whose key is `key`, at any depth.
fn find_all<'a>(value: &'a serde_yaml::Value, key: &str, found: &mut Vec<&'a serde_yaml::Value>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some(key) {
                    found.push(v);
                }
                find_all(v, key, found);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                find_all(item, key, found);
            }
        }
        _ => {}
    }
}

/// (Secret name, mount path) of every Secret a pod template mounts as files.
fn secret_mounts(template: &serde_yaml::Value) -> Vec<(String, String)> {
    let volumes = &template["spec"]["volumes"];
    let mut found = Vec::new();
    for mount in references(template, "volumeMounts")
        .iter()
        .flat_map(|list| list.as_sequence().unwrap())
    {
        // Not a pod volume: a StatefulSet's claim template.
        let Some(volume) = volumes
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
        else {
            continue;
        };
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            found.push((
                secret.to_owned(),
                mount["mountPath"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found
}

/// (name, path) of every `..._FILE` variable a pod template's containers set.
fn file_variables(template: &serde_yaml::Value) -> Vec<(String, String)> {
    references(template, "env")
        .iter()
        .flat_map(|list| list.as_sequence().unwrap())
        .filter_map(|var| {
            let name = var["name"].as_str()?;
            let value = var["value"].as_str()?;
            name.ends_with("_FILE")
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn references<'a>(template: &'a serde_yaml::Value, key: &str) -> Vec<&'a serde_yaml::Value> {
    let mut found = Vec::new();
    find_all(template, key, &mut found);
    found
}

/// Each manifest applies alone: every ConfigMap, Service and PodDisruptionBudget it needs is in
/// it, every Secret it reads is either in it or created by a command in its comments (with the
/// keys it reads), a StatefulSet's governing Service is headless, and every Service, budget
/// and policy selects a pod of the file. The drain Job's volume claim is the one
/// gateway-spool.yaml's StatefulSet makes.
#[test]
fn each_kubernetes_manifest_names_nothing_it_does_not_hold_or_say_how_to_create() {
    let spool = Manifest::read("gateway-spool.yaml");
    for path in manifests() {
        let file = path.file_name().unwrap().to_str().unwrap();
        let manifest = Manifest::read(file);
        let secrets = manifest.documented_secrets();
        for (workload, template) in manifest.pod_templates() {
            let at = format!("{}: {workload}", manifest.file);
            assert_eq!(
                template["spec"]["automountServiceAccountToken"],
                serde_yaml::Value::Bool(false),
                "{at}: no service account token"
            );
            for config_map in references(template, "configMap")
                .into_iter()
                .chain(references(template, "configMapKeyRef"))
            {
                let name = config_map["name"].as_str().unwrap();
                assert!(
                    manifest.names("ConfigMap").iter().any(|n| n == name),
                    "{at} mounts ConfigMap {name}, which the file does not hold"
                );
            }
            let documented = |name: &str, key: &str| {
                manifest.names("Secret").iter().any(|n| n == name)
                    || secrets
                        .iter()
                        .any(|(n, keys)| n == name && keys.iter().any(|k| k == key))
            };
            for secret in references(template, "secretKeyRef") {
                let name = secret["name"].as_str().unwrap();
                let key = secret["key"].as_str().unwrap();
                assert!(
                    documented(name, key),
                    "{at} reads Secret {name} key {key}: neither in the file nor created by a \
                     documented command ({secrets:?})"
                );
            }
            // Secrets mounted as files: every FP_RELAY_*_FILE variable names a key of a
            // mounted Secret that the file says how to create.
            for (secret, mount) in secret_mounts(template) {
                assert!(
                    documented(&secret, "") || secrets.iter().any(|(n, _)| *n == secret),
                    "{at} mounts Secret {secret}, which no documented command creates"
                );
                for variable in file_variables(template) {
                    if let Some(key) = variable.1.strip_prefix(&format!("{mount}/")) {
                        assert!(
                            documented(&secret, key),
                            "{at}: {} reads key {key} of Secret {secret}, which no documented \
                             command creates ({secrets:?})",
                            variable.0
                        );
                    }
                }
            }
            for claim in references(template, "persistentVolumeClaim") {
                let claim = claim["claimName"].as_str().unwrap();
                let statefulset = &spool.names("StatefulSet")[0];
                assert!(
                    claim.starts_with(&format!("spool-{statefulset}-")),
                    "{at} mounts claim {claim}, which gateway-spool.yaml's StatefulSet does not make"
                );
            }
        }
        for statefulset in manifest.of_kind("StatefulSet") {
            let service = statefulset["spec"]["serviceName"].as_str().unwrap();
            let governing = manifest
                .of_kind("Service")
                .into_iter()
                .find(|s| s["metadata"]["name"] == service)
                .unwrap_or_else(|| panic!("{file}: no Service {service} for the StatefulSet"));
            assert_eq!(
                governing["spec"]["clusterIP"], "None",
                "{service} is headless"
            );
        }
        for service in manifest.of_kind("Service") {
            assert!(
                manifest.selects_a_pod(&service["spec"]["selector"]),
                "{file}: Service {:?} selects no pod of the file",
                service["metadata"]["name"]
            );
        }
        for kind in ["PodDisruptionBudget", "NetworkPolicy"] {
            for object in manifest.of_kind(kind) {
                let selector = if kind == "NetworkPolicy" {
                    &object["spec"]["podSelector"]["matchLabels"]
                } else {
                    &object["spec"]["selector"]["matchLabels"]
                };
                assert!(
                    manifest.selects_a_pod(selector),
                    "{file}: {kind} {:?} selects no pod of the file",
                    object["metadata"]["name"]
                );
            }
        }
    }
}

/// The stateless and the spooling gateway are alternatives: applied side by side they share
/// no object and neither's Services, budget or policy select the other's pods. The
/// ServiceMonitor scrapes the admin Service of both, and no webhook Service exposes the admin
/// port.
#[test]
fn the_two_gateways_share_nothing_and_only_admin_services_expose_metrics() {
    let gateway = Manifest::read("gateway.yaml");
    let spool = Manifest::read("gateway-spool.yaml");
    for (one, other) in [(&gateway, &spool), (&spool, &gateway)] {
        for object in &one.objects {
            let key = (&object["kind"], &object["metadata"]["name"]);
            assert!(
                !other
                    .objects
                    .iter()
                    .any(|o| (&o["kind"], &o["metadata"]["name"]) == key),
                "{key:?} is in both {} and {}",
                one.file,
                other.file
            );
        }
        for service in one.of_kind("Service") {
            assert!(
                !other.selects_a_pod(&service["spec"]["selector"]),
                "{}: Service {:?} also selects {}'s pods",
                one.file,
                service["metadata"]["name"],
                other.file
            );
        }
    }
    let monitor = Manifest::read("servicemonitor.yaml");
    let selector = monitor.of_kind("ServiceMonitor")[0]["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
        .clone();
    for manifest in [&gateway, &spool] {
        let mut admin = 0;
        for service in manifest.of_kind("Service") {
            let labels = &service["metadata"]["labels"];
            let selected = selector
                .iter()
                .all(|(k, v)| labels[k.as_str().unwrap()] == *v);
            let ports: Vec<_> = service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                selected,
                ports.contains(&"admin".to_owned()),
                "{}: {:?} (ports {ports:?})",
                manifest.file,
                service["metadata"]["name"]
            );
            admin += usize::from(selected);
        }
        assert_eq!(admin, 1, "{}: one admin Service", manifest.file);
    }
}

/// The relay configuration each manifest ships (its ConfigMap, plus the variables its
/// containers set) is one the relay accepts.
#[test]
fn the_configuration_each_manifest_ships_is_valid() {
    for path in manifests() {
        let file = path.file_name().unwrap().to_str().unwrap();
        let manifest = Manifest::read(file);
        for (workload, template) in manifest.pod_templates() {
            let config_map = references(template, "configMap")
                .first()
                .map(|c| c["name"].as_str().unwrap().to_owned());
            let toml = config_map.map(|name| {
                let object = manifest
                    .of_kind("ConfigMap")
                    .into_iter()
                    .find(|c| c["metadata"]["name"] == name.as_str())
                    .unwrap();
                let dir =
                    std::env::temp_dir().join(format!("fp-relay-k8s-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("relay.toml");
                std::fs::write(&path, object["data"]["relay.toml"].as_str().unwrap()).unwrap();
                path
            });
            // Each variable a container sets; a Secret's file holds a value of the shape the
            // documented command gives it.
            let secrets_dir =
                std::env::temp_dir().join(format!("fp-relay-k8s-secrets-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&secrets_dir).unwrap();
            let env: Vec<(String, String)> = references(template, "env")
                .iter()
                .flat_map(|list| list.as_sequence().unwrap())
                .map(|var| {
                    let name = var["name"].as_str().unwrap().to_owned();
                    let secret = if name.starts_with("FP_RELAY_AUTH_") {
                        r#"["a-secret-of-sixteen-characters-or-more"]"#
                    } else {
                        "a-secret"
                    };
                    let value = match var["value"].as_str() {
                        Some(path) if name.ends_with("_FILE") => {
                            let file = secrets_dir.join(path.replace('/', "_"));
                            std::fs::write(&file, format!("{secret}\n")).unwrap();
                            file.display().to_string()
                        }
                        Some(value) => value.to_owned(),
                        None => secret.to_owned(),
                    };
                    (name, value)
                })
                .collect();
            // `serve` needs credentials; the other commands (spool drain) read only Kafka's.
            let serves = references(template, "args")
                .iter()
                .any(|args| args[0] == "serve");
            let overrides = Overrides {
                insecure_no_auth: !serves,
                ..Overrides::default()
            };
            let result = Config::load(toml.as_deref(), env, &overrides);
            let _ = std::fs::remove_dir_all(&secrets_dir);
            if let Some(toml) = &toml {
                let _ = std::fs::remove_dir_all(toml.parent().unwrap());
            }
            result.unwrap_or_else(|error| panic!("{file}: {workload}: {error}"));
        }
    }
}
