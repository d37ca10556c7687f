//! Prints Meridian's CRDs as YAML (`crdgen | kubectl apply -f -`), or writes one file per CRD
//! into a directory (`crdgen manifests/crds`); `crdgen --mcs manifests/mcs` for the optional
//! Multi-Cluster Services CRDs.

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--mcs`: the optional Multi-Cluster Services CRDs (`manifests/mcs/`) instead.
    let manifests = if args.first().is_some_and(|a| a == "--mcs") {
        args.remove(0);
        meridian_controller::mcs::types::manifests()
    } else {
        meridian_controller::crd::manifests()
    };
    match args.first() {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
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
