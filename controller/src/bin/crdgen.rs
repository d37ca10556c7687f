//! Prints Meridian's CRDs as YAML (`crdgen | kubectl apply -f -`), or writes one file per CRD
//! into a directory (`crdgen manifests/crds`).

fn main() -> anyhow::Result<()> {
    let manifests = meridian_controller::crd::manifests();
    match std::env::args().nth(1) {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in manifests {
                std::fs::write(std::path::Path::new(&dir).join(name), yaml)?;
            }
        }
        None => {
            for (_, yaml) in manifests {
                print!("{yaml}");
            }
        }
    }
    Ok(())
}
