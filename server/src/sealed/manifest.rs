//! The manifest side of `kinko seal --manifest` and `kinko sealed rewrap --manifest` (pure):
//! finds every container env value of a YAML stream with the binding it sits in (namespace,
//! service account, variable name), and rewrites chosen values in place without touching any
//! other byte, so comments, order and formatting survive and a diff shows only what changed.

use std::collections::HashSet;
use std::ops::Range;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Event;
use zeroize::Zeroizing;

use super::PREFIX;

/// What marks a value to be sealed: `value: kinko:plain:<text>`.
pub const PLAIN_PREFIX: &str = "kinko:plain:";

/// What an env value of a container holds, when it is one of ours.
pub enum Content {
    /// `kinko:plain:<text>`: the text is to be sealed.
    Plain(Zeroizing<String>),
    /// `kinko:sealed:v1:…`, as written.
    Sealed(String),
}

/// One `env[].value` of a container that holds a marked or sealed value.
pub struct Site {
    /// The scalar's bytes in the text, quotes included.
    pub span: Range<usize>,
    /// 1-based, for messages.
    pub line: usize,
    /// `Deployment/payments-api`, for messages.
    pub resource: String,
    /// `metadata.namespace` of the resource, if it has one (kustomize often sets it later).
    pub namespace: Option<String>,
    /// `serviceAccountName` of the Pod spec, `default` when unset (as Kubernetes does).
    pub service_account: String,
    /// The `name` of the env entry.
    pub name: String,
    pub content: Content,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("line", &self.line)
            .field("resource", &self.resource)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

enum Node {
    Scalar {
        value: String,
        style: TScalarStyle,
        mark: Marker,
    },
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Mapping(entries) => entries.iter().find_map(|(k, v)| match k {
                Node::Scalar { value, .. } if value == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    fn text(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    fn items(&self) -> &[Node] {
        match self {
            Node::Sequence(items) => items,
            _ => &[],
        }
    }
}

/// Deeper nesting than any manifest has is refused (the tree is walked recursively).
const MAX_DEPTH: usize = 64;

/// Builds one tree per document from the parser's events. Refuses what would let the binding
/// read here differ from the one Kubernetes applies: a duplicate key (Kubernetes takes the
/// last, a naive reader the first), anchors and aliases, and `<<` merge keys.
#[derive(Default)]
struct TreeBuilder {
    documents: Vec<Node>,
    stack: Vec<(Node, Option<Node>)>,
    error: Option<String>,
}

impl TreeBuilder {
    fn fail(&mut self, line: usize, what: &str) {
        self.error
            .get_or_insert_with(|| format!("line {line}: {what} (nothing was changed)"));
    }

    fn push(&mut self, node: Node, mark: &Marker) {
        let failure = match self.stack.last_mut() {
            None => {
                self.documents.push(node);
                None
            }
            Some((Node::Sequence(items), _)) => {
                items.push(node);
                None
            }
            Some((Node::Mapping(entries), pending)) => match pending.take() {
                None => {
                    let failure = match &node {
                        Node::Scalar { value, .. } if value == "<<" => {
                            Some("a `<<` merge key: write the fields out")
                        }
                        Node::Scalar { value, .. }
                            if entries.iter().any(|(k, _)| k.text() == Some(value)) =>
                        {
                            Some("a duplicate key")
                        }
                        _ => None,
                    };
                    *pending = Some(node);
                    failure
                }
                Some(key) => {
                    entries.push((key, node));
                    None
                }
            },
            Some(_) => unreachable!("only collections are stacked"),
        };
        if let Some(what) = failure {
            self.fail(mark.line(), what);
        }
    }

    fn open(&mut self, node: Node, mark: &Marker) {
        if self.stack.len() >= MAX_DEPTH {
            self.fail(mark.line(), "nesting too deep");
            return;
        }
        self.stack.push((node, None));
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let anchored = matches!(
            event,
            Event::Scalar(_, _, anchor, _)
                | Event::SequenceStart(anchor, _)
                | Event::MappingStart(anchor, _)
                if anchor != 0
        );
        if anchored || matches!(event, Event::Alias(_)) {
            self.fail(mark.line(), "an anchor or alias: write the value out");
            return;
        }
        match event {
            Event::Scalar(value, style, _, _) => {
                self.push(Node::Scalar { value, style, mark }, &mark)
            }
            Event::SequenceStart(..) => self.open(Node::Sequence(Vec::new()), &mark),
            Event::MappingStart(..) => self.open(Node::Mapping(Vec::new()), &mark),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push(node, &mark);
                }
            }
            _ => {}
        }
    }
}

/// Where the Pod spec of each workload kind is.
fn pod_spec<'a>(kind: &str, resource: &'a Node) -> Option<&'a Node> {
    match kind {
        "Pod" => resource.get("spec"),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => {
            let template = if kind == "PodTemplate" {
                resource.get("template")
            } else {
                resource.path(&["spec", "template"])
            };
            template?.get("spec")
        }
        "CronJob" => resource.path(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Every env value of every container that is marked (`kinko:plain:`) or sealed, in order.
/// A marked value anywhere else is an error, so nothing meant to be sealed stays plain.
pub fn sites(text: &str) -> Result<Vec<Site>, String> {
    if let Some(at) = text
        .bytes()
        .enumerate()
        .position(|(i, b)| b == b'\r' && text.as_bytes().get(i + 1) != Some(&b'\n'))
    {
        let line = text[..at].matches('\n').count() + 1;
        return Err(format!(
            "line {line}: a carriage return without a line feed; use LF or CRLF line ends"
        ));
    }
    let mut builder = TreeBuilder::default();
    Parser::new_from_str(text)
        .load(&mut builder, true)
        .map_err(|e| format!("not valid YAML: {e}"))?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    let lines = LineIndex::new(text);
    let mut found = Vec::new();
    let mut claimed = HashSet::new();
    for document in &builder.documents {
        let Some(kind) = document.get("kind").and_then(Node::text) else {
            continue;
        };
        let Some(spec) = pod_spec(kind, document) else {
            continue;
        };
        let resource = format!(
            "{kind}/{}",
            document
                .path(&["metadata", "name"])
                .and_then(Node::text)
                .unwrap_or("?")
        );
        let namespace = document
            .path(&["metadata", "namespace"])
            .and_then(Node::text)
            .map(str::to_owned);
        let service_account = match spec
            .get("serviceAccountName")
            .or_else(|| spec.get("serviceAccount"))
        {
            None => "default",
            Some(Node::Scalar { value, .. }) if !value.is_empty() => value,
            Some(_) => {
                return Err(format!(
                    "{resource}: serviceAccountName must be a name (nothing was changed)"
                ))
            }
        };
        let containers = ["initContainers", "containers"]
            .iter()
            .filter_map(|key| spec.get(key))
            .flat_map(Node::items);
        for entry in containers
            .filter_map(|c| c.get("env"))
            .flat_map(Node::items)
        {
            let Some(Node::Scalar { value, style, mark }) = entry.get("value") else {
                continue;
            };
            let content = if let Some(plain) = value.strip_prefix(PLAIN_PREFIX) {
                Content::Plain(Zeroizing::new(plain.to_owned()))
            } else if value.starts_with(PREFIX) {
                Content::Sealed(value.clone())
            } else {
                continue;
            };
            let line = mark.line();
            let name = entry
                .get("name")
                .and_then(Node::text)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| format!("line {line}: the env entry has no name"))?;
            let span = lines.scalar_span(text, value, *style, mark)?;
            claimed.insert(span.start);
            found.push(Site {
                span,
                line,
                resource: resource.clone(),
                namespace: namespace.clone(),
                service_account: service_account.to_owned(),
                name: name.to_owned(),
                content,
            });
        }
    }
    for document in &builder.documents {
        stray_marker(document, &lines, text, &claimed)?;
    }
    Ok(found)
}

/// Refuses a `kinko:plain:` scalar that is not a container's env value.
fn stray_marker(
    node: &Node,
    lines: &LineIndex,
    text: &str,
    claimed: &HashSet<usize>,
) -> Result<(), String> {
    match node {
        Node::Scalar { value, mark, .. } if value.starts_with(PLAIN_PREFIX) => {
            let at = lines.offset(text, mark).unwrap_or(usize::MAX);
            if claimed.contains(&at) {
                Ok(())
            } else {
                Err(format!(
                    "line {}: a kinko:plain: value outside a container's env[].value of a \
                     workload; only those can be sealed (nothing was changed)",
                    mark.line()
                ))
            }
        }
        Node::Sequence(items) => items
            .iter()
            .try_for_each(|n| stray_marker(n, lines, text, claimed)),
        Node::Mapping(entries) => entries.iter().try_for_each(|(k, v)| {
            stray_marker(k, lines, text, claimed)?;
            stray_marker(v, lines, text, claimed)
        }),
        _ => Ok(()),
    }
}

/// Byte offsets of line starts, to turn the parser's (line, column) into a byte offset.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }

    /// The byte offset of a mark (line 1-based, column 0-based in characters).
    fn offset(&self, text: &str, mark: &Marker) -> Option<usize> {
        let start = *self.0.get(mark.line().checked_sub(1)?)?;
        let rest = text.get(start..)?;
        let column = rest
            .char_indices()
            .nth(mark.col())
            .map_or(rest.len(), |(i, _)| i);
        Some(start + column)
    }

    /// The bytes of a one-line plain or quoted scalar whose parsed value is `value`.
    fn scalar_span(
        &self,
        text: &str,
        value: &str,
        style: TScalarStyle,
        mark: &Marker,
    ) -> Result<Range<usize>, String> {
        let line = mark.line();
        let one_line = || {
            format!(
                "line {line}: write a kinko: value on one line, plain or quoted \
                 (not a block or multi-line scalar)"
            )
        };
        let start = self.offset(text, mark).ok_or_else(one_line)?;
        let rest = &text[start..];
        let length = match style {
            TScalarStyle::Plain => rest.starts_with(value).then_some(value.len()),
            TScalarStyle::SingleQuoted => {
                let source = format!("'{}'", value.replace('\'', "''"));
                rest.starts_with(&source).then_some(source.len())
            }
            TScalarStyle::DoubleQuoted => double_quoted_length(rest),
            _ => None,
        }
        .ok_or_else(one_line)?;
        Ok(start..start + length)
    }
}

/// The length of a `"…"` scalar at the start of `text` if it closes on its own line.
fn double_quoted_length(text: &str) -> Option<usize> {
    let mut bytes = text.bytes().enumerate().skip(1);
    while let Some((i, b)) = bytes.next() {
        match b {
            b'\\' => {
                bytes.next();
            }
            b'"' => return Some(i + 1),
            b'\n' => return None,
            _ => {}
        }
    }
    None
}

/// `text` with each span replaced by its new value; a quoted scalar keeps its quotes (sealed
/// values need no escaping). Spans must not overlap.
pub fn rewrite(text: &str, replacements: &[(Range<usize>, &str)]) -> String {
    let mut sorted: Vec<_> = replacements.iter().collect();
    sorted.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len() + replacements.len() * 2048);
    let mut at = 0;
    for (span, value) in sorted {
        out.push_str(&text[at..span.start]);
        match text[span.clone()].chars().next() {
            Some(quote @ ('"' | '\'')) => {
                out.push(quote);
                out.push_str(value);
                out.push(quote);
            }
            _ => out.push_str(value),
        }
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = "\
# The payments API. Comments stay.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: payments-api
  namespace: payments
spec:
  template:
    metadata:
      annotations: {kinko.io/inject: \"true\"}
    spec:
      serviceAccountName: payments-api
      containers:
        - name: api
          image: example/api:1
          env:
            - name: DB_PASSWORD   # sealed below
              value: kinko:plain:p@ss w0rd
            - name: QUOTED
              value: \"kinko:plain:a \\\"b\\\" c\"  # quoted
            - {name: FLOW, value: 'kinko:plain:it''s'}
            - name: LOG_LEVEL
              value: debug
            - name: ALREADY
              value: kinko:sealed:v1:AAAA
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          initContainers:
            - name: init
              env: [{name: TOKEN, value: kinko:plain:x}]
";

    fn plain(site: &Site) -> &str {
        match &site.content {
            Content::Plain(text) => text,
            Content::Sealed(_) => panic!("sealed"),
        }
    }

    #[test]
    fn finds_each_marked_env_value_with_its_binding_and_exact_bytes() {
        let found = sites(DEPLOYMENT).unwrap();
        let names: Vec<_> = found.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["DB_PASSWORD", "QUOTED", "FLOW", "ALREADY", "TOKEN"]);
        assert_eq!(plain(&found[0]), "p@ss w0rd");
        assert_eq!(plain(&found[1]), "a \"b\" c");
        assert_eq!(plain(&found[2]), "it's");
        assert!(matches!(&found[3].content, Content::Sealed(v) if v == "kinko:sealed:v1:AAAA"));
        assert_eq!(plain(&found[4]), "x");
        assert_eq!(&DEPLOYMENT[found[0].span.clone()], "kinko:plain:p@ss w0rd");
        assert_eq!(
            &DEPLOYMENT[found[1].span.clone()],
            "\"kinko:plain:a \\\"b\\\" c\""
        );
        assert_eq!(&DEPLOYMENT[found[2].span.clone()], "'kinko:plain:it''s'");
        assert_eq!(found[0].line, 18);
        assert_eq!(found[0].namespace.as_deref(), Some("payments"));
        assert_eq!(found[0].service_account, "payments-api");
        assert_eq!(found[0].resource, "Deployment/payments-api");
        assert_eq!(found[4].namespace, None);
        assert_eq!(found[4].service_account, "default");
        assert_eq!(found[4].resource, "CronJob/nightly");
    }

    #[test]
    fn a_rewrite_changes_only_the_chosen_values() {
        let found = sites(DEPLOYMENT).unwrap();
        let replacements: Vec<_> = found
            .iter()
            .filter(|s| matches!(s.content, Content::Plain(_)))
            .map(|s| (s.span.clone(), "kinko:sealed:v1:NEW"))
            .collect();
        let out = rewrite(DEPLOYMENT, &replacements);
        let before: Vec<_> = DEPLOYMENT.lines().collect();
        let after: Vec<_> = out.lines().collect();
        assert_eq!(before.len(), after.len());
        let changed: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(_, b)| b.trim())
            .collect();
        assert_eq!(
            changed,
            [
                "value: kinko:sealed:v1:NEW",
                "value: \"kinko:sealed:v1:NEW\"  # quoted",
                "- {name: FLOW, value: 'kinko:sealed:v1:NEW'}",
                "env: [{name: TOKEN, value: kinko:sealed:v1:NEW}]",
            ]
        );
        let again = sites(&out).unwrap();
        assert!(again
            .iter()
            .all(|s| matches!(&s.content, Content::Sealed(_))));
        assert_eq!(again.len(), 5);
    }

    #[test]
    fn a_marker_that_cannot_be_rewritten_exactly_is_refused() {
        let stray = "kind: ConfigMap\nmetadata: {name: x}\ndata:\n  a: kinko:plain:x\n";
        let error = sites(stray).unwrap_err();
        assert!(
            error.contains("line 4") && error.contains("outside"),
            "{error}"
        );
        let block = DEPLOYMENT.replace(
            "value: kinko:plain:p@ss w0rd",
            "value: |\n                kinko:plain:x",
        );
        let error = sites(&block).unwrap_err();
        assert!(error.contains("one line"), "{error}");
        let folded = DEPLOYMENT.replace(
            "value: kinko:plain:p@ss w0rd",
            "value: kinko:plain:p@ss\n                w0rd",
        );
        assert!(sites(&folded).unwrap_err().contains("one line"));
        assert!(sites("a: [").unwrap_err().contains("not valid YAML"));
    }

    #[test]
    fn what_would_make_the_binding_differ_from_kubernetes_is_refused() {
        let twice = DEPLOYMENT.replace(
            "      serviceAccountName: payments-api\n",
            "      serviceAccountName: attacker\n      serviceAccountName: payments-api\n",
        );
        assert!(sites(&twice).unwrap_err().contains("duplicate key"));
        let alias = DEPLOYMENT.replace(
            "  namespace: payments\n",
            "  namespace: &ns payments\n  labels: {ns: *ns}\n",
        );
        assert!(sites(&alias).unwrap_err().contains("anchor or alias"));
        let merge = DEPLOYMENT.replace(
            "      serviceAccountName: payments-api\n",
            "      <<: {serviceAccountName: payments-api}\n",
        );
        assert!(sites(&merge).unwrap_err().contains("merge key"));
        let empty = DEPLOYMENT.replace(
            "serviceAccountName: payments-api",
            "serviceAccountName: \"\"",
        );
        assert!(sites(&empty).unwrap_err().contains("must be a name"));
        let deep = format!("kind: Pod\nspec: {}\n", "[".repeat(100) + &"]".repeat(100));
        assert!(sites(&deep).is_err());
        let lone_cr = DEPLOYMENT.replace("# The payments API. Comments stay.\n", "# a\rb\n");
        assert!(sites(&lone_cr).unwrap_err().contains("carriage return"));
        let crlf = DEPLOYMENT.replace('\n', "\r\n");
        let found = sites(&crlf).unwrap();
        assert_eq!(&crlf[found[0].span.clone()], "kinko:plain:p@ss w0rd");
        assert_eq!(
            &crlf[found[1].span.clone()],
            "\"kinko:plain:a \\\"b\\\" c\""
        );
    }

    #[test]
    fn the_scanner_never_panics_on_mangled_manifests() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let alphabet: Vec<char> = " \n\t:-'\"#{}[],|>&*!%@`ßkinko:plain:value"
            .chars()
            .collect();
        for _ in 0..3000 {
            let mut text: Vec<char> = DEPLOYMENT.chars().collect();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..text.len());
                match rng.gen_range(0..3) {
                    0 => text[at] = alphabet[rng.gen_range(0..alphabet.len())],
                    1 => text.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                    _ => {
                        text.remove(at);
                    }
                }
            }
            let text: String = text.into_iter().collect();
            if let Ok(found) = sites(&text) {
                for site in &found {
                    assert!(
                        text.is_char_boundary(site.span.start)
                            && text.is_char_boundary(site.span.end)
                    );
                }
                let spans: Vec<_> = found
                    .iter()
                    .map(|s| (s.span.clone(), "kinko:sealed:v1:X"))
                    .collect();
                let _ = sites(&rewrite(&text, &spans));
            }
        }
    }

    #[test]
    fn an_env_entry_with_an_empty_name_is_refused() {
        // Found by the sealed_manifest fuzzer: `{name,: A}` is a key `name` with no value.
        for entry in [
            "{name,: A, value: kinko:plain:x}",
            "{name: '', value: kinko:plain:x}",
        ] {
            let text = format!("kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, env: [{entry}]}}]\n");
            let error = sites(&text).unwrap_err();
            assert!(error.contains("has no name"), "{error}");
        }
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "kind: Pod\nmetadata: {name: ünïcode, namespace: n}\nspec:\n  containers:\n  - {name: é, env: [{name: A, value: kinko:plain:ß}]}\n";
        let found = sites(text).unwrap();
        assert_eq!(&text[found[0].span.clone()], "kinko:plain:ß");
        assert_eq!(found[0].service_account, "default");
    }
}
