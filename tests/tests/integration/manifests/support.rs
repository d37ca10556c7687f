use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The workspace root.
pub(super) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed crate lives in the workspace")
        .to_path_buf()
}

/// The result of one kubectl run.
pub(super) struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl args…` with optional stdin; fails loudly when kubectl is missing.
pub(super) async fn kubectl(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl must be installed (Debian: apt-get install kubernetes-client)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .await
            .expect("writing kubectl's stdin");
    }
    let out = child.wait_with_output().await.expect("kubectl runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kubectl kustomize manifests`, as text.
pub(super) async fn render_base() -> String {
    let dir = repo_root().join("manifests");
    let run = kubectl(&["kustomize", dir.to_str().expect("UTF-8 path")], None).await;
    assert!(
        run.ok,
        "kubectl kustomize manifests failed:\n{}",
        run.stderr
    );
    run.stdout
}

/// Objects applied separately from the base because they need a newer Kubernetes than
/// the base's 1.20 (NetworkPolicy `endPort`: 1.22).
pub(super) const OPTIONAL: [&str; 1] = ["manifests/gateway/networkpolicy.yaml"];

/// The rendered base plus [`OPTIONAL`]: everything an up-to-date cluster runs.
pub(super) async fn install_documents() -> Vec<serde_json::Value> {
    let mut docs = documents(&render_base().await);
    for file in OPTIONAL {
        docs.extend(file_documents(file));
    }
    docs
}

/// Every non-empty YAML document of `text`, as JSON values.
pub(super) fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("every document is valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of a file in the repository.
pub(super) fn file_documents(relative: &str) -> Vec<Value> {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents(&text)
}

/// The objects in the ```yaml blocks of a Markdown file (blocks without `kind` skipped).
pub(super) fn markdown_objects(relative: &str) -> Vec<Value> {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            None if line.trim_start().starts_with("```yaml") => block = Some(String::new()),
            Some(b) if line.trim_start().starts_with("```") => {
                out.extend(documents(b).into_iter().filter(|d| d.get("kind").is_some()));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Fails listing every problem.
pub(super) fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
