//! A fake Kubernetes API server for the kubernetes backend's tests: it speaks the real wire
//! format for what the backend uses (JSON objects with `resourceVersion`, `Status` errors, list,
//! watch streams with `?watch=1`, label and field selectors, the log stream with `follow=true`,
//! collection deletes, JSON merge patches) for Pods, Secrets, PersistentVolumeClaims and
//! `networking.k8s.io/v1` NetworkPolicies in any namespace, lists across namespaces
//! (`/api/v1/pods?labelSelector=...`), and the cluster-scoped Namespaces. As the API server
//! does, it makes nothing in a namespace that does not exist ([`FakeCluster::kubeconfig`]
//! makes the one it names).
//!
//! Pods really run: each is a container on a Docker Engine (the test engine), on the host's
//! network with a loopback address of its own as its pod IP (so pods reach a proxy on the
//! host's loopback, standing in for the server's Service); claims are Docker volumes; secret
//! volumes are files on the host bound in read-only; `envFrom`, `secretKeyRef` and the
//! `status.podIP` field reference are resolved as the kubelet would. The container status says
//! how a pod ended (exit code, `OOMKilled`).
//!
//! Every request is recorded ([`FakeCluster::requests`]) so tests can check what a client sent,
//! field by field.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Label on every container and volume the fake makes, with its cluster id.
const LABEL_CLUSTER: &str = "delegate.fake-kube";
/// Events kept for watches that start from an older resourceVersion.
const HISTORY: usize = 10_000;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, `DELETE`, ...
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/ns/pods`.
    pub path: String,
    /// The query string's pairs.
    pub query: BTreeMap<String, String>,
    /// The JSON body, if there was one.
    pub body: Option<Value>,
}

/// One change to an object, as a watch sends it.
#[derive(Debug, Clone)]
struct Event {
    version: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

struct Inner {
    version: u64,
    /// (resource, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    history: VecDeque<Event>,
    next_ip: u32,
    /// The second octet of this cluster's pod IPs (127.NET.x.y).
    net: u8,
    requests: Vec<Recorded>,
}

struct Shared {
    id: String,
    host: String,
    docker: Docker,
    files: tempfile::TempDir,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    stop: CancellationToken,
}

/// A running fake API server; see the module docs.
pub struct FakeCluster {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    shared: Arc<Shared>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// A namespaced resource's kind and the API group version it is served under.
fn kind_of(resource: &str) -> Option<(&'static str, &'static str)> {
    match resource {
        "pods" => Some(("Pod", "v1")),
        "secrets" => Some(("Secret", "v1")),
        "persistentvolumeclaims" => Some(("PersistentVolumeClaim", "v1")),
        "networkpolicies" => Some(("NetworkPolicy", "networking.k8s.io/v1")),
        _ => None,
    }
}

/// The kind of `resource` if the request's path serves it (`/api/v1/...` for the core group,
/// `/apis/GROUP/VERSION/...` for the others).
fn kind_at(uri: &Uri, resource: &str) -> Option<(&'static str, &'static str)> {
    let (kind, api) = kind_of(resource)?;
    let prefix = if api == "v1" {
        "/api/v1/".to_string()
    } else {
        format!("/apis/{api}/")
    };
    uri.path().starts_with(&prefix).then_some((kind, api))
}

/// Whether `name` is a DNS-1123 label (what a namespace's name must be).
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn now() -> String {
    // RFC 3339 seconds, as the API server writes timestamps.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Whether `labels` match a label selector (`k`, `k=v`, `k==v`, `k!=v`, comma-joined).
fn selects(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                get(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k) == Some(v.trim())
            } else {
                get(term).is_some()
            }
        })
}

/// Whether `object` matches the request's label and field selectors.
fn matches(query: &BTreeMap<String, String>, object: &Value) -> bool {
    let meta = &object["metadata"];
    if let Some(selector) = query.get("labelSelector")
        && !selects(selector, &meta["labels"])
    {
        return false;
    }
    if let Some(fields) = query.get("fieldSelector") {
        for term in fields.split(',') {
            if let Some(name) = term.trim().strip_prefix("metadata.name=")
                && meta["name"].as_str() != Some(name)
            {
                return false;
            }
        }
    }
    true
}

/// Applies an RFC 7386 JSON merge patch (`application/merge-patch+json`, kube-rs's
/// `Patch::Merge`): objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(fields) = target {
        for (key, value) in changes {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// `512Mi`, `1Gi`, `1000` -> bytes.
fn bytes_of(quantity: &str) -> Option<i64> {
    let units = [
        ("Ki", 1i64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<i64>().ok().map(|n| n * factor);
        }
    }
    quantity.parse().ok()
}

/// `500m`, `2` -> nano CPUs.
fn nano_cpus(quantity: &str) -> Option<i64> {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<i64>().ok().map(|m| m * 1_000_000),
        None => quantity.parse::<f64>().ok().map(|c| (c * 1e9) as i64),
    }
}

impl Shared {
    fn volume_name(&self, claim: &str) -> String {
        format!("fake-kube-{}-{claim}", self.id)
    }

    fn container_name(&self, namespace: &str, pod: &str) -> String {
        format!("fake-kube-{}-{namespace}-{pod}", self.id)
    }

    /// Stores `object` at a new resourceVersion and tells watchers.
    fn put(&self, resource: &str, kind: &'static str, mut object: Value) -> Value {
        let mut inner = self.inner.lock().expect("fake cluster state");
        inner.version += 1;
        let version = inner.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = (
            resource.to_string(),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        if kind == "DELETED" {
            inner.objects.remove(&key);
        } else {
            inner.objects.insert(key, object.clone());
        }
        let event = Event {
            version,
            resource: resource.to_string(),
            kind,
            object: object.clone(),
        };
        inner.history.push_back(event.clone());
        if inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        let _ = self.events.send(event);
        object
    }

    /// Stores namespace `object` as the API server completes it; `None` if it exists.
    fn make_namespace(&self, mut object: Value) -> Option<Value> {
        let name = object["metadata"]["name"].as_str()?.to_string();
        if self.get("namespaces", "", &name).is_some() {
            return None;
        }
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Namespace");
        object["metadata"]["uid"] = json!(format!("{:032x}", rand_u128()));
        object["metadata"]["creationTimestamp"] = json!(now());
        // The API server labels every namespace with its name (what NetworkPolicies select by).
        object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        object["spec"] = json!({"finalizers": ["kubernetes"]});
        object["status"] = json!({"phase": "Active"});
        Some(self.put("namespaces", "ADDED", object))
    }

    fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .expect("fake cluster state")
            .objects
            .get(&(resource.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Updates a pod's status if it is still the pod with `uid`.
    fn set_pod_status(&self, namespace: &str, name: &str, uid: &str, status: Value) {
        if let Some(mut pod) = self.get("pods", namespace, name)
            && pod["metadata"]["uid"].as_str() == Some(uid)
        {
            pod["status"] = status;
            self.put("pods", "MODIFIED", pod);
        }
    }

    fn secret_data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secret = self.get("secrets", namespace, name)?;
        let mut data = BTreeMap::new();
        if let Some(map) = secret["data"].as_object() {
            for (k, v) in map {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .ok()?;
                data.insert(k.clone(), bytes);
            }
        }
        Some(data)
    }

    /// Runs a pod as a container: resolves its environment and volumes, creates and starts the
    /// container, and watches it to its end. Returns the status to store, or a waiting reason.
    async fn run_pod(self: &Arc<Self>, namespace: &str, pod: &Value, ip: &str) -> Value {
        let waiting = |reason: &str, message: String| {
            json!({
                "phase": "Pending",
                "containerStatuses": [{
                    "name": pod["spec"]["containers"][0]["name"], "image": pod["spec"]["containers"][0]["image"],
                    "ready": false, "restartCount": 0, "imageID": "",
                    "state": {"waiting": {"reason": reason, "message": message}},
                }],
            })
        };
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let container = &pod["spec"]["containers"][0];
        let image = container["image"].as_str().unwrap_or_default().to_string();
        if self.docker.inspect_image(&image).await.is_err() {
            return waiting(
                "ErrImagePull",
                format!("image {image} is not on the fake cluster's engine"),
            );
        }
        // Environment, in the kubelet's order: envFrom, then env.
        let mut env: Vec<(String, String)> = Vec::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(secret) = from["secretRef"]["name"].as_str() {
                let Some(data) = self.secret_data(namespace, secret) else {
                    return waiting(
                        "CreateContainerConfigError",
                        format!("secret \"{secret}\" not found"),
                    );
                };
                for (k, v) in data {
                    env.push((k, String::from_utf8_lossy(&v).into_owned()));
                }
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_string()
            } else if var["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("status.podIP") {
                ip.to_string()
            } else if let Some(secret) = var["valueFrom"]["secretKeyRef"]["name"].as_str() {
                let k = var["valueFrom"]["secretKeyRef"]["key"]
                    .as_str()
                    .unwrap_or_default();
                match self
                    .secret_data(namespace, secret)
                    .and_then(|d| d.get(k).cloned())
                {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => {
                        return waiting(
                            "CreateContainerConfigError",
                            format!("secret \"{secret}\" has no key {k}"),
                        );
                    }
                }
            } else {
                String::new()
            };
            env.push((key, value));
        }
        // Volumes.
        let mut binds = Vec::new();
        let mut tmpfs = std::collections::HashMap::new();
        let volumes: BTreeMap<String, Value> = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v.clone(),
                )
            })
            .collect();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let path = m["mountPath"].as_str().unwrap_or_default();
            let ro = m["readOnly"].as_bool().unwrap_or(false);
            let Some(volume) = volumes.get(m["name"].as_str().unwrap_or_default()) else {
                return waiting(
                    "CreateContainerConfigError",
                    format!("no volume for {path}"),
                );
            };
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                if self
                    .get("persistentvolumeclaims", namespace, claim)
                    .is_none()
                {
                    return waiting(
                        "ContainerCreating",
                        format!("persistentvolumeclaim \"{claim}\" not found"),
                    );
                }
                binds.push(format!(
                    "{}:{path}{}",
                    self.volume_name(claim),
                    if ro { ":ro" } else { "" }
                ));
            } else if volume.get("emptyDir").is_some() {
                let size = volume["emptyDir"]["sizeLimit"]
                    .as_str()
                    .and_then(bytes_of)
                    .unwrap_or(1 << 30);
                // The kubelet makes an emptyDir writable for the pod; docker's tmpfs copies the
                // image directory's mode, so ownership by the pod's user stands in for that.
                let owner = pod["spec"]["securityContext"]["runAsUser"]
                    .as_i64()
                    .unwrap_or(0);
                let group = pod["spec"]["securityContext"]["fsGroup"]
                    .as_i64()
                    .unwrap_or(0);
                tmpfs.insert(
                    path.to_string(),
                    format!("rw,nosuid,nodev,size={size},uid={owner},gid={group},mode=1777"),
                );
            } else {
                let mut sources = Vec::new();
                if let Some(s) = volume["secret"]["secretName"].as_str() {
                    sources.push(s.to_string());
                }
                for p in volume["projected"]["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = p["secret"]["name"].as_str() {
                        sources.push(s.to_string());
                    }
                }
                let dir = self
                    .files
                    .path()
                    .join(uid)
                    .join(m["name"].as_str().unwrap_or("v"));
                for secret in sources {
                    let Some(data) = self.secret_data(namespace, &secret) else {
                        return waiting(
                            "ContainerCreating",
                            format!("secret \"{secret}\" not found"),
                        );
                    };
                    if let Err(e) = write_files(&dir, data).await {
                        return waiting("ContainerCreating", e.to_string());
                    }
                }
                binds.push(format!("{}:{path}:ro", dir.display()));
            }
        }
        let security = &container["securityContext"];
        let pod_security = &pod["spec"]["securityContext"];
        let uid_of = |k: &str| security[k].as_i64().or_else(|| pod_security[k].as_i64());
        let user = match (uid_of("runAsUser"), uid_of("runAsGroup")) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            _ => None,
        };
        let limits = &container["resources"]["limits"];
        let memory = limits["memory"].as_str().and_then(bytes_of);
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
        };
        let body = ContainerCreateBody {
            image: Some(image),
            user,
            working_dir: container["workingDir"].as_str().map(str::to_string),
            entrypoint: strings(&container["command"]),
            cmd: strings(&container["args"]),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(std::collections::HashMap::from([(
                LABEL_CLUSTER.to_string(),
                self.id.clone(),
            )])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                tmpfs: Some(tmpfs),
                network_mode: Some("host".into()),
                readonly_rootfs: security["readOnlyRootFilesystem"].as_bool(),
                cap_drop: strings(&security["capabilities"]["drop"]),
                security_opt: (security["allowPrivilegeEscalation"].as_bool() == Some(false))
                    .then(|| vec!["no-new-privileges:true".to_string()]),
                memory,
                memory_swap: memory,
                nano_cpus: limits["cpu"].as_str().and_then(nano_cpus),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cname = self.container_name(namespace, name);
        let options = CreateContainerOptionsBuilder::new().name(&cname).build();
        if let Err(e) = self.docker.create_container(Some(options), body).await {
            return waiting("CreateContainerError", e.to_string());
        }
        if let Err(e) = self.docker.start_container(&cname, None).await {
            return waiting("CreateContainerError", e.to_string());
        }
        let started = now();
        let this = self.clone();
        let (ns, pod_name, pod_uid) = (namespace.to_string(), name.to_string(), uid.to_string());
        let base = json!({
            "name": container["name"], "image": container["image"], "imageID": "",
            "restartCount": 0, "containerID": format!("docker://{cname}"),
        });
        let ended_base = base.clone();
        let ip_owned = ip.to_string();
        let started_at = started.clone();
        tokio::spawn(async move {
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut waiting = this.docker.wait_container(&cname, Some(options));
            tokio::select! {
                _ = waiting.next() => {}
                () = this.stop.cancelled() => return,
            }
            let Ok(info) = this.docker.inspect_container(&cname, None).await else {
                return;
            };
            let state = info.state.unwrap_or_default();
            let code = state.exit_code.unwrap_or(-1);
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let mut status = ended_base;
            status["ready"] = json!(false);
            status["started"] = json!(false);
            status["state"] = json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now(),
                "containerID": format!("docker://{cname}"),
            }});
            this.set_pod_status(
                &ns,
                &pod_name,
                &pod_uid,
                json!({
                    "phase": if code == 0 { "Succeeded" } else { "Failed" },
                    "podIP": ip_owned, "podIPs": [{"ip": ip_owned}], "hostIP": "127.0.0.1",
                    "startTime": started_at, "containerStatuses": [status],
                }),
            );
        });
        let mut running = base;
        running["ready"] = json!(true);
        running["started"] = json!(true);
        running["state"] = json!({"running": {"startedAt": started}});
        json!({
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "startTime": started, "containerStatuses": [running],
        })
    }

    /// Removes what backs an object: a pod's container and files, a claim's volume.
    async fn release(&self, resource: &str, object: &Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match resource {
            "pods" => {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = self
                    .docker
                    .remove_container(&self.container_name(namespace, name), Some(options))
                    .await;
                if let Some(uid) = object["metadata"]["uid"].as_str() {
                    let _ = tokio::fs::remove_dir_all(self.files.path().join(uid)).await;
                }
            }
            "persistentvolumeclaims" => {
                let _ = self
                    .docker
                    .remove_volume(
                        &self.volume_name(name),
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
            }
            _ => {}
        }
    }
}

/// Writes a secret volume's files (read-only for everyone, as `defaultMode` 0444 would).
async fn write_files(dir: &Path, data: BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).await?;
    for (k, v) in data {
        if k.contains('/') || k.starts_with('.') {
            continue;
        }
        let path = dir.join(k);
        tokio::fs::write(&path, v).await?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).await?;
    }
    Ok(())
}

type Shared_ = State<Arc<Shared>>;

fn record(shared: &Shared, method: &Method, uri: &Uri, body: &Bytes) -> BTreeMap<String, String> {
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default();
    let body = serde_json::from_slice(body).ok();
    shared
        .inner
        .lock()
        .expect("fake cluster state")
        .requests
        .push(Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: query.clone(),
            body,
        });
    query
}

/// `a=b&c=d%2Ce` -> pairs, percent-decoded.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b'+', _) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn collection(
    State(shared): Shared_,
    UrlPath((namespace, resource)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let query = record(&shared, &method, &uri, &body);
    let Some((kind, api)) = kind_at(&uri, &resource) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no resource {resource}"),
        );
    };
    match method {
        Method::POST => create(&shared, &namespace, &resource, (kind, api), &body).await,
        Method::GET if matches!(query.get("watch").map(String::as_str), Some("1" | "true")) => {
            watch(&shared, &namespace, &resource, &query)
        }
        Method::GET => list(
            &shared,
            &resource,
            Some(&namespace),
            (kind, api),
            &query,
            &headers,
        ),
        Method::DELETE => {
            let doomed: Vec<Value> = {
                let inner = shared.inner.lock().expect("fake cluster state");
                inner
                    .objects
                    .iter()
                    .filter(|((r, ns, _), o)| {
                        *r == resource && *ns == namespace && matches(&query, o)
                    })
                    .map(|(_, o)| o.clone())
                    .collect()
            };
            let mut gone = Vec::new();
            for object in doomed {
                shared.release(&resource, &object).await;
                gone.push(shared.put(&resource, "DELETED", object));
            }
            axum::Json(json!({
                "kind": format!("{kind}List"), "apiVersion": api, "metadata": {}, "items": gone,
            }))
            .into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            method.to_string(),
        ),
    }
}

/// The objects of `resource` in `namespace` (every namespace: `None`) the query selects, as a
/// list (of their metadata only when the client asks for `PartialObjectMetadataList`).
fn list(
    shared: &Shared,
    resource: &str,
    namespace: Option<&str>,
    (kind, api): (&str, &str),
    query: &BTreeMap<String, String>,
    headers: &axum::http::HeaderMap,
) -> Response {
    let (version, items) = {
        let inner = shared.inner.lock().expect("fake cluster state");
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                r == resource && namespace.is_none_or(|n| n == ns) && matches(query, o)
            })
            .map(|(_, o)| o.clone())
            .collect();
        (inner.version, items)
    };
    let metadata_only = headers
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
    let list = if metadata_only {
        json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": version.to_string()},
            "items": items.iter().map(|o| json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            })).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "kind": format!("{kind}List"), "apiVersion": api,
            "metadata": {"resourceVersion": version.to_string()},
            "items": items,
        })
    };
    axum::Json(list).into_response()
}

/// `GET /api/v1/{resource}`: a list across namespaces.
async fn list_all(
    State(shared): Shared_,
    UrlPath(resource): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let query = record(&shared, &method, &uri, &Bytes::new());
    match kind_at(&uri, &resource) {
        Some(kind) => list(&shared, &resource, None, kind, &query, &headers),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no resource {resource}"),
        ),
    }
}

/// `/api/v1/namespaces`: list (`GET`) or make (`POST`) a namespace.
async fn namespaces(
    State(shared): Shared_,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let query = record(&shared, &method, &uri, &body);
    if method == Method::GET {
        return list(
            &shared,
            "namespaces",
            None,
            ("Namespace", "v1"),
            &query,
            &headers,
        );
    }
    let Ok(object) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON".into(),
        );
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !dns_label(&name) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
            ),
        );
    }
    match shared.make_namespace(object) {
        Some(made) => (StatusCode::CREATED, axum::Json(made)).into_response(),
        None => status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("namespaces \"{name}\" already exists"),
        ),
    }
}

/// `GET /api/v1/namespaces/{name}`.
async fn namespace(
    State(shared): Shared_,
    UrlPath(name): UrlPath<String>,
    method: Method,
    uri: Uri,
) -> Response {
    record(&shared, &method, &uri, &Bytes::new());
    match shared.get("namespaces", "", &name) {
        Some(found) => axum::Json(found).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{name}\" not found"),
        ),
    }
}

async fn create(
    shared: &Arc<Shared>,
    namespace: &str,
    resource: &str,
    (kind, api): (&'static str, &'static str),
    body: &Bytes,
) -> Response {
    if shared.get("namespaces", "", namespace).is_none() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        );
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON".into(),
        );
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_name {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        );
    }
    if shared.get(resource, namespace, &name).is_some() {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
    }
    object["apiVersion"] = json!(api);
    object["kind"] = json!(kind);
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(format!("{:032x}", rand_u128()));
    object["metadata"]["creationTimestamp"] = json!(now());
    match resource {
        "secrets" => {
            if let Some(strings) = object["stringData"].as_object().cloned() {
                for (k, v) in strings {
                    object["data"][k] = json!(
                        base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or_default())
                    );
                }
                object.as_object_mut().map(|o| o.remove("stringData"));
            }
            let size: usize = object["data"]
                .as_object()
                .map(|d| {
                    d.values()
                        .map(|v| v.as_str().map_or(0, |s| s.len() * 3 / 4))
                        .sum()
                })
                .unwrap_or(0);
            if size > 1 << 20 {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "data: Too long: must have at most 1048576 bytes".into(),
                );
            }
            let object = shared.put(resource, "ADDED", object);
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        "networkpolicies" => {
            let object = shared.put(resource, "ADDED", object);
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        "persistentvolumeclaims" => {
            let made = shared
                .docker
                .create_volume(VolumeCreateRequest {
                    name: Some(shared.volume_name(&name)),
                    labels: Some(std::collections::HashMap::from([(
                        LABEL_CLUSTER.to_string(),
                        shared.id.clone(),
                    )])),
                    ..Default::default()
                })
                .await;
            if let Err(e) = made {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    e.to_string(),
                );
            }
            object["status"] = json!({"phase": "Bound", "accessModes": object["spec"]["accessModes"],
                "capacity": object["spec"]["resources"]["requests"]});
            let object = shared.put(resource, "ADDED", object);
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        _ => {
            let ip = {
                let mut inner = shared.inner.lock().expect("fake cluster state");
                inner.next_ip += 1;
                let n = inner.next_ip;
                // A /16 of loopback per cluster, so clusters of tests side by side (or a
                // leftover of a crashed one) never share a pod IP.
                format!("127.{}.{}.{}", inner.net, (n >> 8) & 0xff, n & 0xff)
            };
            object["status"] = json!({"phase": "Pending"});
            let stored = shared.put(resource, "ADDED", object.clone());
            let this = shared.clone();
            let namespace = namespace.to_string();
            // The kubelet's part happens after the create returns, as in a real cluster.
            tokio::spawn(async move {
                let status = this.run_pod(&namespace, &stored, &ip).await;
                let name = stored["metadata"]["name"].as_str().unwrap_or_default();
                let uid = stored["metadata"]["uid"].as_str().unwrap_or_default();
                // Only a status newer than what the container's end may already have written.
                if let Some(pod) = this.get("pods", &namespace, name)
                    && pod["status"]["phase"] == "Pending"
                {
                    this.set_pod_status(&namespace, name, uid, status);
                }
            });
            let object = shared
                .get(resource, &namespace_of(&object), &name)
                .unwrap_or(object);
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
    }
}

fn namespace_of(object: &Value) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let a = h.finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    (u128::from(a) << 64) | u128::from(h.finish())
}

fn watch(
    shared: &Arc<Shared>,
    namespace: &str,
    resource: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    // Subscribe before reading the history, so nothing falls between the two.
    let mut live = shared.events.subscribe();
    let since: Option<u64> = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let wanted = {
        let (resource, namespace, query) =
            (resource.to_string(), namespace.to_string(), query.clone());
        move |e: &Event| {
            e.resource == resource
                && namespace_of(&e.object) == namespace
                && matches(&query, &e.object)
        }
    };
    let first: Vec<Event> = {
        let inner = shared.inner.lock().expect("fake cluster state");
        match since {
            Some(v) => inner
                .history
                .iter()
                .filter(|e| e.version > v && wanted(e))
                .cloned()
                .collect(),
            // No version: the current objects, as ADDED.
            None => inner
                .objects
                .values()
                .map(|o| Event {
                    version: o["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    resource: resource.to_string(),
                    kind: "ADDED",
                    object: o.clone(),
                })
                .filter(&wanted)
                .collect(),
        }
    };
    let mut seen = first
        .iter()
        .map(|e| e.version)
        .max()
        .unwrap_or(since.unwrap_or(0));
    if since.is_none() {
        seen = shared.inner.lock().expect("fake cluster state").version;
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let stop = shared.stop.clone();
    let stream = async_stream::stream! {
        for e in first {
            yield Ok::<_, std::io::Error>(line(&e));
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(e) if e.version > seen && wanted(&e) => {
                        seen = e.version;
                        yield Ok(line(&e));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        yield Ok(Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                            "reason": "Expired", "message": "too old resource version"}}))));
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = &mut deadline => break,
                () = stop.cancelled() => break,
            }
        }
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn line(e: &Event) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})))
}

async fn object(
    State(shared): Shared_,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &body);
    if kind_at(&uri, &resource).is_none() {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no resource {resource}"),
        );
    }
    let Some(found) = shared.get(&resource, &namespace, &name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource} \"{name}\" not found"),
        );
    };
    match method {
        Method::GET => axum::Json(found).into_response(),
        Method::PATCH => {
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the patch is not JSON".into(),
                );
            };
            let mut patched = found.clone();
            merge_patch(&mut patched, &patch);
            // As the API server does: an immutable Secret's data never changes, its metadata may.
            if found["immutable"] == json!(true)
                && (patched["data"] != found["data"] || patched["immutable"] != found["immutable"])
            {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{resource} \"{name}\" is invalid: data: field is immutable"),
                );
            }
            patched["metadata"]["name"] = found["metadata"]["name"].clone();
            patched["metadata"]["namespace"] = found["metadata"]["namespace"].clone();
            axum::Json(shared.put(&resource, "MODIFIED", patched)).into_response()
        }
        Method::DELETE => {
            shared.release(&resource, &found).await;
            axum::Json(shared.put(&resource, "DELETED", found)).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            method.to_string(),
        ),
    }
}

async fn log(
    State(shared): Shared_,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
) -> Response {
    record(&shared, &method, &uri, &Bytes::new());
    let Some(pod) = shared.get("pods", &namespace, &name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
        );
    };
    let state = &pod["status"]["containerStatuses"][0]["state"];
    if state.get("running").is_none() && state.get("terminated").is_none() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "container \"sandbox\" in pod \"{name}\" is waiting to start: ContainerCreating"
            ),
        );
    }
    let follow = matches!(params.get("follow").map(String::as_str), Some("true" | "1"));
    let options = LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .build();
    let logs = shared
        .docker
        .logs(&shared.container_name(&namespace, &name), Some(options));
    let stop = shared.stop.clone();
    let stream = logs
        .take_until(async move { stop.cancelled().await })
        .map(|chunk| match chunk {
            Ok(output) => Ok(output.into_bytes()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl FakeCluster {
    /// Starts a fake API server on loopback whose pods run on the engine at `docker_host`.
    pub async fn start(docker_host: &str) -> std::io::Result<FakeCluster> {
        let docker = Docker::connect_with_host(docker_host)
            .map_err(std::io::Error::other)?
            .negotiate_version()
            .await
            .map_err(std::io::Error::other)?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            id: format!("{:08x}", rand_u128() as u32),
            host: docker_host.to_string(),
            docker,
            files: tempfile::tempdir()?,
            inner: Mutex::new(Inner {
                version: 100,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                next_ip: 1,
                net: (rand_u128() % 250) as u8 + 2,
                requests: Vec::new(),
            }),
            events,
            stop: CancellationToken::new(),
        });
        let app = Router::new()
            .route("/api/v1/namespaces", get(namespaces).post(namespaces))
            .route("/api/v1/namespaces/{name}", get(namespace))
            .route("/api/v1/{resource}", get(list_all))
            .route(
                "/api/v1/namespaces/{ns}/{resource}",
                get(collection).post(collection).delete(collection),
            )
            .route(
                "/api/v1/namespaces/{ns}/{resource}/{name}",
                get(object).delete(object).patch(object),
            )
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/{resource}",
                get(collection).post(collection).delete(collection),
            )
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/{resource}/{name}",
                get(object).delete(object),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(log))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(FakeCluster { url, shared })
    }

    /// Writes a kubeconfig for this cluster (namespace `namespace`, made if need be, as a
    /// cluster's admin would) into `dir`.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> std::io::Result<PathBuf> {
        self.shared
            .make_namespace(json!({"metadata": {"name": namespace}}));
        // JSON is YAML: kubeconfig readers take it as it is.
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        });
        let path = dir.join("kubeconfig");
        std::fs::write(&path, config.to_string())?;
        Ok(path)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .inner
            .lock()
            .expect("fake cluster state")
            .requests
            .clone()
    }

    /// The stored object, as a client would GET it.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared.get(resource, namespace, name)
    }

    /// The namespaces holding an object of `resource` named `name`.
    pub fn namespaces_of(&self, resource: &str, name: &str) -> Vec<String> {
        self.shared
            .inner
            .lock()
            .expect("fake cluster state")
            .objects
            .keys()
            .filter(|(r, _, n)| r == resource && n == name)
            .map(|(_, ns, _)| ns.clone())
            .collect()
    }

    /// Names of the objects of `resource` in `namespace`.
    pub fn names(&self, resource: &str, namespace: &str) -> Vec<String> {
        self.shared
            .inner
            .lock()
            .expect("fake cluster state")
            .objects
            .keys()
            .filter(|(r, ns, _)| r == resource && ns == namespace)
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// Stops serving and removes every container and volume the fake made (dropping it does
    /// the same, also when a test panics).
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        remove_all(&self.shared.docker, &self.shared.id).await;
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        let (host, id) = (self.shared.host.clone(), self.shared.id.clone());
        // Drop cannot await; a thread with a runtime (and an engine client) of its own can,
        // inside a runtime or not.
        let cleaned = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(docker) = Docker::connect_with_host(&host) {
                        remove_all(&docker, &id).await;
                    }
                });
            }
        });
        let _ = cleaned.join();
    }
}

/// Removes every container and volume of cluster `id`.
async fn remove_all(docker: &Docker, id: &str) {
    {
        let label = format!("{LABEL_CLUSTER}={id}");
        let filters = std::collections::HashMap::from([("label", vec![label.as_str()])]);
        if let Ok(containers) = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
        {
            for c in containers {
                if let Some(id) = c.id {
                    let options = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            }
        }
        if let Ok(volumes) = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
        {
            for v in volumes.volumes.unwrap_or_default() {
                let _ = docker
                    .remove_volume(
                        &v.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_merges_objects_removes_nulls_and_replaces_the_rest() {
        let mut object =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}, "name": "x"}, "n": [1]});
        merge_patch(
            &mut object,
            &json!({"metadata": {"labels": {"a": "3", "b": null}, "annotations": {"t": "c"}}, "n": [2]}),
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"a": "3"}, "annotations": {"t": "c"}, "name": "x"}, "n": [2]})
        );
    }

    #[test]
    fn selectors_match_as_the_api_server_does() {
        let labels = json!({"delegate.sandbox": "sbx_1", "delegate.owner": "srv_a"});
        assert!(selects("delegate.sandbox", &labels));
        assert!(selects("delegate.sandbox,delegate.owner=srv_a", &labels));
        assert!(selects("delegate.owner==srv_a", &labels));
        assert!(!selects("delegate.owner=srv_b", &labels));
        assert!(selects("delegate.owner!=srv_b", &labels));
        assert!(!selects("delegate.kind", &labels));
        let pod = json!({"metadata": {"name": "p1", "labels": labels}});
        let query = BTreeMap::from([("fieldSelector".to_string(), "metadata.name=p1".to_string())]);
        assert!(matches(&query, &pod));
        let query = BTreeMap::from([("fieldSelector".to_string(), "metadata.name=p2".to_string())]);
        assert!(!matches(&query, &pod));
    }

    #[test]
    fn queries_are_percent_decoded_and_quantities_read() {
        let pairs = url_pairs("labelSelector=a%3Db%2Cc&watch=true&x=%zz&y=50%");
        assert_eq!(
            pairs,
            [
                ("labelSelector".to_string(), "a=b,c".to_string()),
                ("watch".to_string(), "true".to_string()),
                ("x".to_string(), "%zz".to_string()),
                ("y".to_string(), "50%".to_string()),
            ]
        );
        assert_eq!(bytes_of("512Mi"), Some(512 << 20));
        assert_eq!(bytes_of("1Gi"), Some(1 << 30));
        assert_eq!(bytes_of("lots"), None);
        assert_eq!(nano_cpus("250m"), Some(250_000_000));
        assert_eq!(nano_cpus("2"), Some(2_000_000_000));
        assert!(now().ends_with('Z') && now().len() == 20, "{}", now());
    }
}
