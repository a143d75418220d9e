//! The admission decision, pure: AdmissionReview request bytes and the operator's [`Settings`]
//! in, the AdmissionReview response out. No I/O, no clock, no globals, so every decision is
//! unit-tested from JSON alone.
//!
//! The patch is the difference of the raw JSON before and after (`json_patch::diff` of two
//! `serde_json::Value`s): what the mutation does not touch — unknown fields included — is never
//! re-serialised through a typed model, so it cannot change.
//!
//! A container without `command` runs its image's ENTRYPOINT. The adapter may resolve those
//! from the registry: [`AdmissionRequest::images_to_resolve`] says which images it would need,
//! and [`AdmissionRequest::review`] takes what was found as [`ImageCommands`]. An image missing
//! from that map denies the Pod with the fix, never a Pod that starts without its program.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use kinko_spec::{
    is_valid_role_name, parse_naming_flags, parse_reference, parse_secret_spec, shorten, Naming,
};
use serde_json::{json, Map, Value};

/// The memory `emptyDir` holding envrun and the CA bundle.
pub const VOLUME: &str = "kinko-envrun";
/// Its size limit (the static envrun is about 4 MiB).
pub const VOLUME_SIZE_LIMIT: &str = "16Mi";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "kinko-token";
/// The init container that copies envrun and the CA into [`VOLUME`].
pub const INSTALL_CONTAINER: &str = "kinko-envrun-install";
/// Where [`VOLUME`] is mounted, in the install container and in the selected containers.
pub const ENVRUN_DIR: &str = "/kinko";
pub const ENVRUN_PATH: &str = "/kinko/envrun";
pub const CA_PATH: &str = "/kinko/ca.pem";
/// Where [`TOKEN_VOLUME`] is mounted, and the token file in it.
pub const TOKEN_DIR: &str = "/var/run/secrets/kinko.io";
pub const TOKEN_PATH: &str = "/var/run/secrets/kinko.io/token";
/// envrun inside the envrun image (a static binary at the image root).
pub const ENVRUN_IN_IMAGE: &str = "/envrun";
/// The variable through which the install container receives the CA bundle.
pub const INSTALL_CA_ENV: &str = "KINKO_INSTALL_CA_PEM";
/// The install container's user and group (PSS `restricted` wants a non-root numeric id).
pub const INSTALL_UID: i64 = 65532;

pub const INJECT: &str = "kinko.io/inject";
pub const ROLE: &str = "kinko.io/role";
pub const SECRETS: &str = "kinko.io/secrets";
pub const CONTAINERS: &str = "kinko.io/containers";
pub const INIT_CONTAINERS: &str = "kinko.io/init-containers";
pub const ENVRUN_ARGS: &str = "kinko.io/envrun-args";
/// `kinko.io/command-<container>`: a JSON array of strings, used as that container's `command`.
pub const COMMAND_PREFIX: &str = "kinko.io/command-";
pub const STATUS: &str = "kinko.io/status";
pub const INJECTED: &str = "injected";
const MIRROR: &str = "kubernetes.io/config.mirror";

/// One `kinko.io/*` annotation value at most (Kubernetes allows 256 KiB for all annotations,
/// but mutating webhooks run before that validation).
pub const MAX_ANNOTATION_BYTES: usize = 32 * 1024;
/// `--secret` specs in `kinko.io/secrets` at most.
pub const MAX_SECRETS: usize = 256;
/// AdmissionReview `request.uid` at most (a UUID is 36).
const MAX_UID_BYTES: usize = 256;
const MAX_WARNINGS: usize = 16;

/// Variables of the selected containers that only the injector sets: the server address and CA
/// come from the operator, never from the Pod.
const CONTROL_VARIABLES: [&str; 9] = [
    "KINKO_ADDR",
    "KINKO_CACERT",
    "KINKO_TOKEN",
    "VAULT_ADDR",
    "VAULT_CACERT",
    "VAULT_TOKEN",
    "BAO_ADDR",
    "BAO_CACERT",
    "BAO_TOKEN",
];

/// What the operator configured; the only source of the server address and CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `https://...`, the kinko address Pods use.
    pub kinko_addr: String,
    /// The CA bundle (PEM) Pods trust for it.
    pub ca_pem: String,
    pub envrun_image: String,
    pub audience: String,
    pub token_expiration_seconds: u32,
    pub excluded_namespaces: BTreeSet<String>,
}

/// An image's configured program, as the registry's image config gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageCommand {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// Resolved images, keyed by the image reference exactly as the Pod spells it.
pub type ImageCommands = BTreeMap<String, ImageCommand>;

/// Why an image could not be resolved, keyed like [`ImageCommands`]; quoted in the denial.
pub type ImageFailures = BTreeMap<String, String>;

/// The platform whose image a Pod runs: `os`/`architecture` as an OCI index spells them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Mutated,
    Unchanged,
    Denied,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
        }
    }
}

/// The answer to one AdmissionReview.
#[derive(Debug)]
pub struct Review {
    pub outcome: Outcome,
    /// The whole `admission.k8s.io/v1` AdmissionReview to send back.
    pub response: Value,
    /// Why it was denied (also in `response.status.message`).
    pub message: Option<String>,
}

/// A body that is not an AdmissionReview: answered with 400, not with a review.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// A parsed AdmissionReview request.
#[derive(Debug)]
pub struct AdmissionRequest {
    uid: String,
    /// Always an object (a `Value`, so a missing field indexes as `null`, never a panic).
    request: Value,
}

/// Checks that `body` is an `admission.k8s.io/v1` AdmissionReview with a request and a uid.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, BadReview> {
    let bad = |m: String| BadReview(m);
    let review: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut review) = review else {
        return Err(bad(
            "the body is not a JSON object (an AdmissionReview)".into()
        ));
    };
    match review.get("apiVersion").and_then(Value::as_str) {
        Some("admission.k8s.io/v1") => {}
        Some(other) => {
            return Err(bad(format!(
                "apiVersion {:?}: only admission.k8s.io/v1 is served",
                shorten(other)
            )))
        }
        None => {
            return Err(bad(
                "apiVersion is missing: expected admission.k8s.io/v1".into()
            ))
        }
    }
    match review.get("kind").and_then(Value::as_str) {
        Some("AdmissionReview") => {}
        other => {
            return Err(bad(format!(
                "kind {:?}: expected AdmissionReview",
                other.map(shorten).unwrap_or_default()
            )))
        }
    }
    let Some(Value::Object(request)) = review.remove("request") else {
        return Err(bad("request is missing or not an object".into()));
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() && uid.len() <= MAX_UID_BYTES => uid.to_owned(),
        _ => {
            return Err(bad(format!(
                "request.uid is missing, empty, or longer than {MAX_UID_BYTES} bytes"
            )))
        }
    };
    Ok(AdmissionRequest {
        uid,
        request: Value::Object(request),
    })
}

/// [`parse`], then [`AdmissionRequest::review`].
pub fn review(
    body: &[u8],
    settings: &Settings,
    images: &ImageCommands,
) -> Result<Review, BadReview> {
    Ok(parse(body)?.review(settings, images))
}

/// Why no patch is made.
enum Stop {
    Unchanged,
    Denied(String),
}

/// How a selected container's program is known.
enum Program {
    /// Its own non-empty `command`, kept exactly.
    Command(Vec<String>),
    /// `kinko.io/command-<name>`, used as its `command` would be.
    Annotation(Vec<String>),
    /// Neither: its image's ENTRYPOINT (and CMD when it has no `args`).
    Image(String),
}

struct Target {
    list: &'static str,
    index: usize,
    name: String,
    program: Program,
    has_args: bool,
}

struct Plan {
    role: String,
    secrets: Vec<String>,
    naming: Naming,
    targets: Vec<Target>,
}

struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, warning: String) {
        if self.0.len() < MAX_WARNINGS {
            self.0.push(warning);
        }
    }
}

impl AdmissionRequest {
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Images of selected containers that have neither `command` nor `kinko.io/command-<name>`:
    /// what a registry lookup should resolve before [`review`](Self::review). Empty when the
    /// request is not an injection.
    pub fn images_to_resolve(&self, settings: &Settings) -> BTreeSet<String> {
        let mut warnings = Warnings(Vec::new());
        match self.plan(settings, &mut warnings) {
            Ok(plan) => plan
                .targets
                .into_iter()
                .filter_map(|t| match t.program {
                    Program::Image(image) => Some(image),
                    _ => None,
                })
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// The platform the Pod's images are resolved for: `spec.nodeSelector`'s
    /// `kubernetes.io/os` and `kubernetes.io/arch`, else `linux/amd64`.
    pub fn platform(&self) -> Platform {
        let selector = &self.request["object"]["spec"]["nodeSelector"];
        let pick = |key: &str, default: String| {
            selector[key]
                .as_str()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .unwrap_or(default)
        };
        let default = Platform::default();
        Platform {
            os: pick("kubernetes.io/os", default.os),
            architecture: pick("kubernetes.io/arch", default.architecture),
        }
    }

    /// The decision, with `images` the ENTRYPOINT/CMD of images resolved from the registry.
    pub fn review(&self, settings: &Settings, images: &ImageCommands) -> Review {
        self.review_with_failures(settings, images, &ImageFailures::new())
    }

    /// [`review`](Self::review), with why each image missing from `images` was not resolved
    /// (quoted in the denial).
    pub fn review_with_failures(
        &self,
        settings: &Settings,
        images: &ImageCommands,
        failures: &ImageFailures,
    ) -> Review {
        let mut warnings = Warnings(Vec::new());
        let result = self
            .plan(settings, &mut warnings)
            .and_then(|plan| self.mutated(&plan, settings, images, failures));
        match result {
            Ok(after) => {
                let before = &self.request["object"];
                let patch = json_patch::diff(before, &after);
                let bytes = serde_json::to_vec(&patch).expect("a patch serialises");
                self.answer(Outcome::Mutated, Some(&bytes), None, warnings.0)
            }
            Err(Stop::Unchanged) => self.answer(Outcome::Unchanged, None, None, warnings.0),
            Err(Stop::Denied(message)) => {
                self.answer(Outcome::Denied, None, Some(message), warnings.0)
            }
        }
    }

    fn answer(
        &self,
        outcome: Outcome,
        patch: Option<&[u8]>,
        message: Option<String>,
        warnings: Vec<String>,
    ) -> Review {
        let mut response = Map::new();
        response.insert("uid".into(), json!(self.uid));
        response.insert("allowed".into(), json!(outcome != Outcome::Denied));
        if let Some(patch) = patch {
            response.insert("patchType".into(), json!("JSONPatch"));
            response.insert(
                "patch".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(patch)),
            );
        }
        if let Some(message) = &message {
            response.insert(
                "status".into(),
                json!({ "code": 403, "reason": "Forbidden", "message": message }),
            );
        }
        if !warnings.is_empty() {
            response.insert("warnings".into(), json!(warnings));
        }
        Review {
            outcome,
            response: json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": response,
            }),
            message,
        }
    }

    /// Whether and how to inject; `Err` for everything that ends without a patch.
    fn plan(&self, settings: &Settings, warnings: &mut Warnings) -> Result<Plan, Stop> {
        let request = &self.request;
        let kind = &request["kind"];
        let is_pod = kind["group"].as_str().unwrap_or("").is_empty()
            && kind["version"].as_str() == Some("v1")
            && kind["kind"].as_str() == Some("Pod");
        let subresource = request["subResource"].as_str().unwrap_or("");
        if !is_pod || !subresource.is_empty() || request["operation"].as_str() != Some("CREATE") {
            return Err(Stop::Unchanged);
        }
        let deny = |m: String| Stop::Denied(m);
        let Some(object) = request["object"].as_object() else {
            return Err(deny("request.object is not a Pod object".into()));
        };
        let annotations = match &object.get("metadata").unwrap_or(&Value::Null)["annotations"] {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            _ => return Err(deny("metadata.annotations is not a map".into())),
        };
        let text = |key: &str| -> Result<Option<&str>, Stop> {
            match annotations.get(key) {
                None => Ok(None),
                Some(Value::String(s)) if s.len() <= MAX_ANNOTATION_BYTES => Ok(Some(s)),
                Some(Value::String(s)) => Err(Stop::Denied(format!(
                    "annotation {key} is {} bytes; at most {MAX_ANNOTATION_BYTES} are accepted",
                    s.len()
                ))),
                Some(_) => Err(Stop::Denied(format!("annotation {key} is not a string"))),
            }
        };
        if annotations.contains_key(MIRROR) {
            return Err(Stop::Unchanged);
        }
        match text(INJECT)? {
            Some("true") => {}
            None | Some("false") => return Err(Stop::Unchanged),
            Some(other) => {
                warnings.push(format!(
                    "{INJECT} is {:?}: only \"true\" injects; the Pod is not injected",
                    shorten(other)
                ));
                return Err(Stop::Unchanged);
            }
        }
        let namespace = request["namespace"]
            .as_str()
            .or_else(|| object.get("metadata").and_then(|m| m["namespace"].as_str()))
            .unwrap_or("");
        if settings.excluded_namespaces.contains(namespace) {
            warnings.push(format!(
                "namespace {namespace} is excluded from kinko injection; the Pod is not injected"
            ));
            return Err(Stop::Unchanged);
        }
        if text(STATUS)? == Some(INJECTED) {
            return Err(Stop::Unchanged);
        }
        for key in annotations.keys() {
            let known = [
                INJECT,
                ROLE,
                SECRETS,
                CONTAINERS,
                INIT_CONTAINERS,
                ENVRUN_ARGS,
                STATUS,
            ];
            if key.starts_with("kinko.io/")
                && !known.contains(&key.as_str())
                && !key.starts_with(COMMAND_PREFIX)
            {
                warnings.push(format!("unknown annotation {} ignored", shorten(key)));
            }
        }

        let spec = match object.get("spec") {
            Some(Value::Object(spec)) => spec,
            _ => return Err(deny("spec is missing or not an object".into())),
        };
        let containers = container_list(spec, "containers")?;
        if containers.is_empty() {
            return Err(deny("spec.containers is empty".into()));
        }
        let init_containers = container_list(spec, "initContainers")?;
        let ephemeral = container_list(spec, "ephemeralContainers")?;
        for (name, _) in containers.iter().chain(&init_containers).chain(&ephemeral) {
            if *name == INSTALL_CONTAINER {
                return Err(deny(format!(
                    "the Pod already has a container named {INSTALL_CONTAINER}, a name kinko injection adds; rename it"
                )));
            }
        }
        for volume in array(spec, "volumes")? {
            let name = volume["name"].as_str().unwrap_or("");
            if name == VOLUME || name == TOKEN_VOLUME {
                return Err(deny(format!(
                    "the Pod already has a volume named {name}, a name kinko injection adds; rename it"
                )));
            }
        }

        let role = match text(ROLE)? {
            Some(role) => role.trim().to_owned(),
            None => spec
                .get("serviceAccountName")
                .or_else(|| spec.get("serviceAccount"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_owned(),
        };
        if !is_valid_role_name(&role) {
            return Err(deny(format!(
                "{ROLE} {:?} is not a role name: expected 1 to 128 of A-Z, a-z, 0-9, '-', '_', '.'",
                shorten(&role)
            )));
        }

        let mut secrets = Vec::new();
        let mut specs = Vec::new();
        if let Some(list) = text(SECRETS)? {
            if !list.trim().is_empty() {
                for item in list.split(',').map(str::trim) {
                    if secrets.len() == MAX_SECRETS {
                        return Err(deny(format!(
                            "{SECRETS} lists more than {MAX_SECRETS} secrets"
                        )));
                    }
                    if item.starts_with('-') {
                        return Err(deny(format!(
                            "{SECRETS}: {:?} is not a secret path",
                            shorten(item)
                        )));
                    }
                    let spec = parse_secret_spec(item).map_err(|e| {
                        deny(format!("{SECRETS}: {}", shorten_message(&e.to_string())))
                    })?;
                    secrets.push(item.to_owned());
                    specs.push(spec);
                }
            }
        }
        let naming = match text(ENVRUN_ARGS)? {
            Some(args) => parse_naming_flags(args.split_whitespace())
                .map_err(|e| deny(format!("{ENVRUN_ARGS}: {e}")))?,
            None => Naming::default(),
        };
        // A single-key spec's variable name is known now: an invalid one fails here, not at start.
        for spec in &specs {
            if let Some(key) = &spec.secret.key {
                naming.name_for(spec, key).map_err(|e| {
                    deny(format!(
                        "{SECRETS}: {}; or add --sanitize to {ENVRUN_ARGS}",
                        shorten_message(&e.to_string())
                    ))
                })?;
            }
        }

        let by_name: HashMap<&str, usize> = containers
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, i))
            .collect();
        let init_by_name: HashMap<&str, usize> = init_containers
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, i))
            .collect();
        let have = |list: &[Named]| {
            let names: Vec<&str> = list.iter().take(10).map(|(n, _)| *n).collect();
            let more = if list.len() > 10 { ", ..." } else { "" };
            format!("{}{more}", names.join(", "))
        };

        // Which containers: the listed ones, else every container (only those with kinko:
        // values when no secret is listed).
        // Only selected containers are checked (`check_env` below): a sidecar of its own may
        // well talk to Vault with VAULT_ADDR.
        let mut references = Vec::with_capacity(containers.len());
        for (_, container) in &containers {
            references.push(count_references(container));
        }
        let mut chosen: Vec<(&'static str, usize)> = Vec::new();
        match text(CONTAINERS)? {
            Some(list) => {
                for name in names_in(CONTAINERS, list)? {
                    let index = *by_name.get(name).ok_or_else(|| {
                        deny(format!(
                            "{CONTAINERS} names container {:?}, which the Pod does not have (it has: {})",
                            shorten(name),
                            have(&containers)
                        ))
                    })?;
                    chosen.push(("containers", index));
                }
            }
            None => {
                for (index, count) in references.iter().enumerate() {
                    if !secrets.is_empty() || *count > 0 {
                        chosen.push(("containers", index));
                    }
                }
            }
        }
        if let Some(list) = text(INIT_CONTAINERS)? {
            for name in names_in(INIT_CONTAINERS, list)? {
                let index = *init_by_name.get(name).ok_or_else(|| {
                    deny(format!(
                        "{INIT_CONTAINERS} names init container {:?}, which the Pod does not have (it has: {})",
                        shorten(name),
                        if init_containers.is_empty() { "none".to_owned() } else { have(&init_containers) }
                    ))
                })?;
                chosen.push(("initContainers", index));
            }
        }
        chosen.sort();
        chosen.dedup();
        let selected: BTreeSet<usize> = chosen
            .iter()
            .filter(|(list, _)| *list == "containers")
            .map(|(_, index)| *index)
            .collect();
        for (index, count) in references.iter().enumerate() {
            if *count > 0 && !selected.contains(&index) {
                warnings.push(format!(
                    "container {} has kinko: values but is not selected by {CONTAINERS}; they reach it unresolved",
                    shorten(containers[index].0)
                ));
            }
        }
        if chosen.is_empty() {
            warnings.push(format!(
                "{INJECT} is \"true\" but no container has anything to fetch ({SECRETS} is empty and no env value starts with kinko:); the Pod is not injected"
            ));
            return Err(Stop::Unchanged);
        }

        // Commands given by annotation must name a container of the Pod.
        let mut commands: HashMap<&str, Vec<String>> = HashMap::new();
        for key in annotations.keys() {
            let Some(name) = key.strip_prefix(COMMAND_PREFIX) else {
                continue;
            };
            if !by_name.contains_key(name) && !init_by_name.contains_key(name) {
                return Err(deny(format!(
                    "annotation {} names container {:?}, which the Pod does not have (it has: {})",
                    shorten(key),
                    shorten(name),
                    have(&containers)
                )));
            }
            let value = text(key)?.unwrap_or_default();
            let words = serde_json::from_str::<Vec<String>>(value)
                .ok()
                .filter(|w| w.first().is_some_and(|p| !p.is_empty()))
                .ok_or_else(|| {
                    deny(format!(
                        "annotation {} must be a JSON array of strings whose first is the program, e.g. [\"/app/server\", \"--flag\"]",
                        shorten(key)
                    ))
                })?;
            commands.insert(name, words);
        }

        let mut targets = Vec::with_capacity(chosen.len());
        for (list, index) in chosen {
            let (name, container) = if list == "containers" {
                containers[index]
            } else {
                init_containers[index]
            };
            check_env(name, container)?;
            let command = strings(name, container, "command")?.unwrap_or_default();
            let has_args = strings(name, container, "args")?.is_some_and(|a| !a.is_empty());
            for mount in array(container, "volumeMounts")? {
                let path = mount["mountPath"].as_str().unwrap_or("");
                let path = path.trim_end_matches('/');
                let inside = |dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
                if inside(ENVRUN_DIR) || inside(TOKEN_DIR) {
                    return Err(deny(format!(
                        "container {}: a volume is already mounted at {}, where kinko injection mounts its own",
                        shorten(name),
                        shorten(path)
                    )));
                }
            }
            let program = if !command.is_empty() {
                if commands.contains_key(name) {
                    warnings.push(format!(
                        "container {} sets command, so {COMMAND_PREFIX}{} is ignored",
                        shorten(name),
                        shorten(name)
                    ));
                }
                Program::Command(command)
            } else if let Some(words) = commands.get(name) {
                Program::Annotation(words.clone())
            } else {
                let image = container
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                Program::Image(image)
            };
            targets.push(Target {
                list,
                index,
                name: name.to_owned(),
                program,
                has_args,
            });
        }
        Ok(Plan {
            role,
            secrets,
            naming,
            targets,
        })
    }

    /// The Pod after injection.
    fn mutated(
        &self,
        plan: &Plan,
        settings: &Settings,
        images: &ImageCommands,
        failures: &ImageFailures,
    ) -> Result<Value, Stop> {
        let mut after = self.request["object"].clone();
        let spec = after["spec"].as_object_mut().expect("checked in plan");
        for target in &plan.targets {
            let container = spec[target.list][target.index]
                .as_object_mut()
                .expect("checked in plan");
            rewrite(container, target, plan, settings, images, failures)?;
        }
        push(
            spec,
            "volumes",
            json!({ "name": VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": VOLUME_SIZE_LIMIT } }),
        );
        push(
            spec,
            "volumes",
            json!({
                "name": TOKEN_VOLUME,
                "projected": { "sources": [ { "serviceAccountToken": {
                    "audience": settings.audience,
                    "expirationSeconds": settings.token_expiration_seconds,
                    "path": "token",
                } } ] },
            }),
        );
        let inits = list_mut(spec, "initContainers");
        inits.insert(0, install_container(settings));
        let metadata = after
            .as_object_mut()
            .expect("checked in plan")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        let annotations = metadata
            .as_object_mut()
            .ok_or_else(|| Stop::Denied("metadata is not an object".into()))?
            .entry("annotations")
            .or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        if let Value::Object(annotations) = annotations {
            annotations.insert(STATUS.into(), json!(INJECTED));
        }
        Ok(after)
    }
}

/// Kubernetes expands `$(VAR)` in `command` and `args`; `$$` is a literal `$`. Everything the
/// injector writes there is literal.
fn literal(text: &str) -> String {
    text.replace('$', "$$")
}

fn rewrite(
    container: &mut Map<String, Value>,
    target: &Target,
    plan: &Plan,
    settings: &Settings,
    images: &ImageCommands,
    failures: &ImageFailures,
) -> Result<(), Stop> {
    let mut command = vec![
        ENVRUN_PATH.to_owned(),
        "--k8s-role".to_owned(),
        literal(&plan.role),
        "--k8s-token-path".to_owned(),
        TOKEN_PATH.to_owned(),
    ];
    for secret in &plan.secrets {
        command.push("--secret".to_owned());
        command.push(literal(secret));
    }
    command.extend(plan.naming.to_flags().iter().map(|f| literal(f)));
    command.push("--".to_owned());
    match &target.program {
        Program::Command(words) | Program::Annotation(words) => command.extend(words.clone()),
        Program::Image(image) => {
            let Some(found) = images.get(image) else {
                let why = failures
                    .get(image)
                    .map(String::as_str)
                    .unwrap_or("the registry lookup was not made");
                return Err(Stop::Denied(no_command(&target.name, image, why)));
            };
            command.extend(found.entrypoint.iter().map(|w| literal(w)));
            if !target.has_args && !found.cmd.is_empty() {
                container.insert(
                    "args".into(),
                    json!(found.cmd.iter().map(|w| literal(w)).collect::<Vec<_>>()),
                );
            } else if !target.has_args && found.entrypoint.is_empty() {
                return Err(Stop::Denied(format!(
                    "container {}: its image has neither ENTRYPOINT nor CMD and the container no command",
                    shorten(&target.name)
                )));
            }
        }
    }
    container.insert("command".into(), json!(command));
    push(
        container,
        "env",
        json!({ "name": "KINKO_ADDR", "value": settings.kinko_addr }),
    );
    push(
        container,
        "env",
        json!({ "name": "KINKO_CACERT", "value": CA_PATH }),
    );
    push(
        container,
        "volumeMounts",
        json!({ "name": VOLUME, "mountPath": ENVRUN_DIR, "readOnly": true }),
    );
    push(
        container,
        "volumeMounts",
        json!({ "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true }),
    );
    Ok(())
}

/// The denial for a container whose program is its image ENTRYPOINT, unknown here.
fn no_command(name: &str, image: &str, why: &str) -> String {
    let name = shorten(name);
    let image = shorten_message(image);
    let why = shorten_message(why);
    format!(
        "container {name} has no command (it relies on the ENTRYPOINT of image {image}, which kinko could not resolve: {why}), \
         so it cannot be started under envrun: set command (and args) for container {name} in the Pod spec, \
         or add the annotation {COMMAND_PREFIX}{name} with the program as a JSON array, e.g. \
         {COMMAND_PREFIX}{name}: '[\"/usr/local/bin/app\", \"serve\"]'"
    )
}

/// The init container that copies envrun and the CA bundle into the shared volume: no shell,
/// no network, PSS `restricted`.
fn install_container(settings: &Settings) -> Value {
    json!({
        "name": INSTALL_CONTAINER,
        "image": settings.envrun_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [ENVRUN_IN_IMAGE, "install", ENVRUN_DIR],
        "env": [ { "name": INSTALL_CA_ENV, "value": settings.ca_pem } ],
        "volumeMounts": [ { "name": VOLUME, "mountPath": ENVRUN_DIR } ],
        "resources": {
            "requests": { "cpu": "10m", "memory": "16Mi" },
            // The copy lands in a memory emptyDir, whose pages count against this limit.
            "limits": { "cpu": "200m", "memory": "64Mi" },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": INSTALL_UID,
            "runAsGroup": INSTALL_UID,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// A container by name, as the Pod spells it.
type Named<'a> = (&'a str, &'a Map<String, Value>);

/// `spec.<field>` as (name, container) pairs; absent is empty.
fn container_list<'a>(spec: &'a Map<String, Value>, field: &str) -> Result<Vec<Named<'a>>, Stop> {
    let mut out = Vec::new();
    for (i, item) in array(spec, field)?.iter().enumerate() {
        let container = item
            .as_object()
            .ok_or_else(|| Stop::Denied(format!("spec.{field}[{i}] is not an object")))?;
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Stop::Denied(format!("spec.{field}[{i}] has no name")))?;
        out.push((name, container));
    }
    Ok(out)
}

/// `map.<field>` as an array; absent or null is empty.
fn array<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], Stop> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Stop::Denied(format!("{field} is not a list"))),
    }
}

fn list_mut<'a>(map: &'a mut Map<String, Value>, field: &str) -> &'a mut Vec<Value> {
    let slot = map.entry(field).or_insert_with(|| json!([]));
    if !slot.is_array() {
        // Only null gets here: anything else was refused by `array` in the plan.
        *slot = json!([]);
    }
    slot.as_array_mut().expect("an array")
}

fn push(map: &mut Map<String, Value>, field: &str, value: Value) {
    list_mut(map, field).push(value);
}

/// A container's `command` or `args`: absent, or a list of strings.
fn strings(
    name: &str,
    container: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<String>>, Stop> {
    match container.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value::<Vec<String>>(value.clone())
            .map(Some)
            .map_err(|_| {
                Stop::Denied(format!(
                    "container {}: {field} is not a list of strings",
                    shorten(name)
                ))
            }),
    }
}

/// How many `env` values of a container start with `kinko:` (well-formed or not).
fn count_references(container: &Map<String, Value>) -> usize {
    match container.get("env") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|item| {
                item["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("kinko:"))
            })
            .count(),
        _ => 0,
    }
}

/// Checks a selected container's `env`: no control variable, every `kinko:` value well-formed.
fn check_env(name: &str, container: &Map<String, Value>) -> Result<(), Stop> {
    for item in array(container, "env")? {
        let variable = item["name"].as_str().unwrap_or("");
        if CONTROL_VARIABLES.contains(&variable) {
            return Err(Stop::Denied(format!(
                "container {}: env sets {variable}, which only the kinko injector sets (the server address, CA and credentials never come from the Pod)",
                shorten(name)
            )));
        }
        if let Some(value) = item["value"].as_str() {
            match parse_reference(variable, value) {
                Ok(_) => {}
                Err(e) => {
                    return Err(Stop::Denied(format!(
                        "container {}: {}",
                        shorten(name),
                        shorten_message(&e.to_string())
                    )))
                }
            }
        }
    }
    Ok(())
}

/// The comma-separated container names of an annotation; an empty item is an error.
fn names_in<'a>(annotation: &str, list: &'a str) -> Result<BTreeSet<&'a str>, Stop> {
    let mut names = BTreeSet::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(Stop::Denied(format!(
                "{annotation} has an empty container name; expected a comma-separated list such as \"app,worker\""
            )));
        }
        names.insert(name);
    }
    Ok(names)
}

/// Error messages that quote input are cut to a bounded length.
fn shorten_message(message: &str) -> String {
    match message.char_indices().nth(400) {
        Some((end, _)) => format!("{}...", &message[..end]),
        None => message.to_owned(),
    }
}
